//go:build e2e

// Accessibility of the pages the handler serves, in headless Chromium:
// checkPage (axe-core, sideways scroll, visible focus and screenshots in
// both color schemes at two widths), the whole flow by keyboard alone, and
// the pages the browser test does not reach.

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// axeTags are the rule sets axe-core runs: WCAG 2.0, 2.1 and 2.2 at levels
// A and AA, and its best practices.
var axeTags = []string{"wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"}

// axeSource is axe-core as npm ci installs it from e2e/package-lock.json.
var axeSource = sync.OnceValues(func() (string, error) {
	b, err := os.ReadFile(filepath.Join("node_modules", "axe-core", "axe.min.js"))
	if err != nil {
		return "", fmt.Errorf("%w (run npm ci in e2e/)", err)
	}
	return string(b), nil
})

// checkPage checks the page open in ctx as a person would meet it, and
// saves what it looks like. Call it once the page has loaded (after a
// WaitVisible or waitText), with a short name for the file names:
//
//	checkPage(t, ctx, "login")
//
// In each color scheme (light, dark, emulated as prefers-color-scheme) at a
// phone width (375 px, mobile) and a desktop width (1280 px) it fails the
// test when axe-core finds a violation of WCAG 2.x A/AA or of its best
// practices, when the page scrolls sideways, or when an element Tab reaches
// shows no focus indicator of 3:1 contrast; and it saves
// artifacts/screenshots/<name>-<scheme>-<width>.png. It fails at once if the
// dark scheme does not change the page, so that a dark run cannot silently
// be a light one. Axe-core is evaluated through DevTools, which the page's
// CSP does not govern, so the pages stay script-free.
//
// It leaves the page in the light scheme at 1280×800, with focus back on
// the element that had it (or none, Tab starting from the top), and the tab
// emulating a focused window (so that focus rings show in later screenshots
// too).
func checkPage(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := filepath.Join(artifacts, "screenshots")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := axeSource()
	if err != nil {
		t.Fatal(err)
	}
	run := func(what string, a chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, a); err != nil {
			t.Fatalf("%s page: %s: %v", name, what, err)
		}
	}
	// As a window the person is typing in: else Chromium paints no focus
	// until the first key event, and screenshots would differ by order.
	run("emulate a focused page", chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, emulation.SetFocusEmulationEnabled, emulation.SetFocusEmulationEnabledParams{Enabled: true})
		return err
	}))
	if loaded, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`typeof window.axe === "object"`)); err != nil {
		t.Fatal(err)
	} else if !loaded {
		run("inject axe-core", chromedp.Evaluate[chromedp.Void](src))
	}
	run("remember the focus", chromedp.Evaluate[chromedp.Void](`window.__bgFocus = document.activeElement`))
	var lightBg string
	each := func(f func(label string)) {
		t.Helper()
		for _, scheme := range []string{"light", "dark"} {
			run("emulate "+scheme, colorScheme(scheme))
			bg, err := chromedp.Run(ctx, chromedp.Evaluate[string](`getComputedStyle(document.body).backgroundColor`))
			if err != nil {
				t.Fatal(err)
			}
			if scheme == "light" {
				lightBg = bg
			} else if bg == lightBg {
				t.Fatalf("%s page: the dark scheme did not change the background (%s)", name, bg)
			}
			for _, w := range []int64{375, 1280} {
				var opts []chromedp.EmulateViewportOption
				h := int64(800)
				if w == 375 {
					opts = append(opts, chromedp.EmulateMobile)
					h = 740
				}
				run("viewport", chromedp.EmulateViewport(w, h, opts...))
				f(fmt.Sprintf("%s-%s-%d", name, scheme, w))
			}
		}
	}
	// First as the page came, focus untouched, then Tab through it.
	each(func(label string) {
		t.Helper()
		overflow, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`))
		if err != nil {
			t.Fatal(err)
		}
		if overflow {
			t.Errorf("%s: scrolls sideways", label)
		}
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, label+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, v := range axeViolations(t, ctx, label) {
			t.Errorf("%s: axe %s", label, v)
		}
	})
	each(func(label string) {
		t.Helper()
		for _, p := range focusProblems(t, ctx) {
			t.Errorf("%s: %s", label, p)
		}
	})
	// With no focus before, Tab must start from the top again, not after
	// the last element the Tab checks reached: a focused mark at the start
	// of the page, removed, leaves Chromium's starting point there.
	run("restore the focus", chromedp.Evaluate[chromedp.Void](`(() => {
		if (window.__bgFocus && window.__bgFocus !== document.body) return window.__bgFocus.focus();
		const mark = document.createElement("span");
		mark.tabIndex = -1;
		document.body.prepend(mark);
		mark.focus();
		mark.remove();
	})()`))
	run("reset", chromedp.Steps(colorScheme("light"), chromedp.EmulateViewport(1280, 800)))
}

// jsString is s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// colorScheme emulates prefers-color-scheme (light or dark) and checks
// that the page sees it.
func colorScheme(scheme string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		if _, err := cdp.Call(ctx, t, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
		}); err != nil {
			return err
		}
		ok, err := chromedp.Evaluate[bool](`matchMedia("(prefers-color-scheme: `+scheme+`)").matches`)(ctx, t)
		if err == nil && !ok {
			err = fmt.Errorf("prefers-color-scheme: %s is not in effect", scheme)
		}
		return err
	})
}

// axeViolation is what the test shows of one axe-core violation.
type axeViolation struct {
	ID     string
	Impact string
	Help   string
	Nodes  []struct {
		Target         json.RawMessage
		FailureSummary string
	}
}

func (v axeViolation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s): %s", v.ID, v.Impact, v.Help)
	for _, n := range v.Nodes {
		fmt.Fprintf(&b, "\n\t%s: %s", n.Target, strings.ReplaceAll(n.FailureSummary, "\n", " "))
	}
	return b.String()
}

// axeViolations runs axe-core (already injected) on the whole document.
func axeViolations(t *testing.T, ctx context.Context, label string) []axeViolation {
	t.Helper()
	tags, _ := json.Marshal(axeTags)
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := chromedp.Run(actx, chromedp.Evaluate[string](
		`axe.run(document, {runOnly: {type: "tag", values: `+string(tags)+`}, resultTypes: ["violations"]}).then(r => JSON.stringify(r.violations))`,
		chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("%s: axe.run: %v", label, err)
	}
	var vs []axeViolation
	if err := json.Unmarshal([]byte(out), &vs); err != nil {
		t.Fatalf("%s: axe.run answered %q: %v", label, out, err)
	}
	return vs
}

// focusState is the element that has focus and what its focus indicator
// looks like: the outline, or else the box shadow; Contrast is that of the
// outline's color against the card the element sits on.
const focusState = `(() => {
	const e = document.activeElement;
	if (!e || e === document.body) return {};
	const s = getComputedStyle(e);
	const rgb = c => (c.match(/[\d.]+/g) || []).map(Number);
	const lum = c => {
		const [r, g, b] = rgb(c).map(v => v / 255).map(v => v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
		return 0.2126 * r + 0.7152 * g + 0.0722 * b;
	};
	let bg = "rgb(255, 255, 255)";
	for (let p = e.parentElement; p; p = p.parentElement) {
		const c = getComputedStyle(p).backgroundColor;
		if (rgb(c).length < 4 || rgb(c)[3] > 0) { bg = c; break; }
	}
	const [hi, lo] = [lum(s.outlineColor), lum(bg)].sort((a, b) => b - a);
	return {
		Desc: e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + (e.type ? "[type=" + e.type + "]" : "") + " " + JSON.stringify((e.innerText || e.name || "").trim()),
		Key: e.id || e.tagName + ":" + (e.innerText || "").trim(),
		Outline: s.outlineStyle === "none" ? 0 : parseFloat(s.outlineWidth),
		Shadow: s.boxShadow,
		Contrast: (hi + 0.05) / (lo + 0.05),
	};
})()`

// focusable are the keys (as focusState names them) of the elements Tab
// should reach, in document order.
const focusable = `[...document.querySelectorAll("a[href], button, input, select, textarea, [tabindex]")]
	.filter(e => !e.disabled && e.tabIndex >= 0 && e.type !== "hidden")
	.map(e => e.id || e.tagName + ":" + (e.innerText || "").trim())`

// focused is what focusState answers.
type focused struct {
	Desc, Key, Shadow string
	Outline, Contrast float64
}

// focusProblems presses Tab until every focusable element has had focus,
// and says which showed no visible focus indicator (an outline of 2 px or
// more at 3:1 against the card, or a box shadow), and which Tab did not
// reach.
func focusProblems(t *testing.T, ctx context.Context) []string {
	t.Helper()
	want, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](focusable))
	if err != nil {
		t.Fatal(err)
	}
	left := map[string]bool{}
	for _, k := range want {
		left[k] = true
	}
	var problems []string
	for i := 0; len(left) > 0 && i < 2*len(want)+2; i++ {
		if err := chromedp.Do(ctx, chromedp.KeyEvent(kb.Tab)); err != nil {
			t.Fatal(err)
		}
		f, err := chromedp.Run(ctx, chromedp.Evaluate[focused](focusState))
		if err != nil {
			t.Fatal(err)
		}
		if f.Key == "" || !left[f.Key] {
			continue
		}
		delete(left, f.Key)
		switch {
		case f.Outline == 0 && (f.Shadow == "" || f.Shadow == "none"):
			problems = append(problems, fmt.Sprintf("%s shows no focus indicator", f.Desc))
		case f.Outline > 0 && f.Outline < 2:
			problems = append(problems, fmt.Sprintf("%s: focus outline %.1f px, under 2 px", f.Desc, f.Outline))
		case f.Outline > 0 && f.Contrast < 3:
			problems = append(problems, fmt.Sprintf("%s: focus outline contrast %.2f:1, under 3:1", f.Desc, f.Contrast))
		}
	}
	for _, k := range want {
		if left[k] {
			problems = append(problems, fmt.Sprintf("Tab never reached %s", k))
		}
	}
	return problems
}

// attrsAre fails the test unless the first element sel matches has these
// attribute values (autocomplete, inputmode, role…), which axe-core only
// checks for validity, not for the value a field needs.
func attrsAre(t *testing.T, ctx context.Context, sel string, want map[string]string) {
	t.Helper()
	got, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]string](`(() => {
		const e = document.querySelector(`+jsString(sel)+`);
		return e && Object.fromEntries([...e.attributes].map(a => [a.name, a.value]));
	})()`))
	if err != nil {
		t.Fatal(err)
	}
	if got == nil {
		t.Errorf("no %s on the page", sel)
		return
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s=%q, want %q", sel, k, got[k], v)
		}
	}
}

// activeElement describes the element that has focus, as a test names it:
// "#id", or "button:Its text".
func activeElement(t *testing.T, ctx context.Context) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(() => {
		const e = document.activeElement;
		if (!e || e === document.body) return "(none)";
		return e.id ? "#" + e.id : e.tagName.toLowerCase() + ":" + e.innerText.trim();
	})()`))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// focusIs fails the test unless the element with focus is want, as
// activeElement names it.
func focusIs(t *testing.T, ctx context.Context, want string) {
	t.Helper()
	if got := activeElement(t, ctx); got != want {
		t.Fatalf("focus on %s, want %s\npage: %s", got, want, bodyText(t, ctx))
	}
}

// loginByKeyboard fills the login page by key events from its focused
// email field, Tab by Tab, presses Enter on Continue and waits for next.
func loginByKeyboard(t *testing.T, ctx context.Context, email, reason string, next chromedp.Action[chromedp.Void]) {
	t.Helper()
	key := func(keys string) chromedp.Action[chromedp.Void] { return chromedp.KeyEvent(keys) }
	focusIs(t, ctx, "#email")
	browserStep(t, ctx, "type the email", key(email), key(kb.Tab))
	focusIs(t, ctx, "#password")
	browserStep(t, ctx, "type the password", key(testPassword), key(kb.Tab))
	focusIs(t, ctx, "#reason")
	browserStep(t, ctx, "type the reason", key(reason), key(kb.Tab))
	focusIs(t, ctx, "button:Continue")
	browserStep(t, ctx, "press Enter on Continue", key(kb.Enter), next)
}

// TestBrowserKeyboardOnly signs in with key events alone, from where each
// page puts the focus: Tab between fields, typing, Enter. It uses "Start
// over" once, so every control of the flow is reached by keyboard.
func TestBrowserKeyboardOnly(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	c := startCaddy(t, defaultSite(mp).caddyfile(), "caddyfile")
	ctx := browser(t)
	seen := map[string]bool{}
	do := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			t.Fatalf("%s: %v\npage: %s", what, err, bodyText(t, ctx))
		}
	}
	key := func(keys string) chromedp.Action[chromedp.Void] { return chromedp.KeyEvent(keys) }
	login := func(reason string) {
		t.Helper()
		loginByKeyboard(t, ctx, "ops@example.com", reason, chromedp.WaitVisible(chromedp.CSS("#code")))
		focusIs(t, ctx, "#code")
	}

	do("open the guarded URL", chromedp.Navigate(c.base+"/admin/dashboard"), chromedp.WaitVisible(chromedp.CSS("#email")))
	login("INC-2 keyboard")
	mp.waitCode(t, seen) // the first code, given up
	do("Tab past Sign in", key(kb.Tab))
	focusIs(t, ctx, "button:Sign in")
	do("Tab to Start over", key(kb.Tab))
	focusIs(t, ctx, "button:No code? Start over")
	do("press Enter on Start over", key(kb.Enter), chromedp.WaitVisible(chromedp.CSS("#email")))

	login("INC-2 keyboard")
	code, _ := mp.waitCode(t, seen)
	do("type the code", key(code), key(kb.Tab))
	focusIs(t, ctx, "button:Sign in")
	do("press Enter on Sign in", key(kb.Enter), waitText("Admin area"))
	if loc, err := chromedp.Run(ctx, chromedp.Location()); err != nil || loc != c.base+"/admin/dashboard" {
		t.Fatalf("landed on %s (%v), not on the URL first asked for", loc, err)
	}
	if txt := bodyText(t, ctx); !strings.Contains(txt, "Signed in as ops@example.com") {
		t.Errorf("upstream page: %q", txt)
	}
	c.waitLog(t, "break-glass login succeeded", map[string]string{"reason": "INC-2 keyboard"})
}

// TestBrowserKeyboardOnlyWithAKey enrols a security key and signs in with
// it by key events alone. Signed in by code, the enrolment page: Tab to the
// key's name and to the button, Space; a name the page refuses, corrected
// in place. Then, the key in the config, the sign-in page: Tab to the
// key's button, Enter.
func TestBrowserKeyboardOnlyWithAKey(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	storage := filepath.Join(t.TempDir(), "storage")
	c, base := keyCaddy(t, mp, storage, "webauthn email", "", "")
	ctx := browser(t)
	virtualKey(t, ctx)
	key := func(keys string) chromedp.Action[chromedp.Void] { return chromedp.KeyEvent(keys) }

	browserStep(t, ctx, "open the enrolment page signed out", chromedp.Navigate(base+"/admin/?break_glass=enroll"),
		chromedp.WaitVisible(chromedp.CSS("#email")))
	loginByKeyboard(t, ctx, "ops@example.com", "INC-4 keyboard", chromedp.WaitVisible(chromedp.CSS("#code")))
	focusIs(t, ctx, "#code")
	code, _ := mp.waitCode(t, map[string]bool{})
	browserStep(t, ctx, "type the code", key(code), key(kb.Enter), chromedp.WaitVisible(chromedp.CSS("#bg-key-start")))

	// A name with a backslash: the key answers, the page refuses the name.
	browserStep(t, ctx, "Tab to the name", key(kb.Tab))
	focusIs(t, ctx, "#key-name")
	browserStep(t, ctx, "type a name with a backslash", key(`YubiKey\safe A`), key(kb.Tab))
	focusIs(t, ctx, "#bg-key-start")
	browserStep(t, ctx, "press Space on the button", key(" "), waitText("The name cannot be used: contains a backslash"))
	if name, err := chromedp.Run(ctx, chromedp.Value(chromedp.CSS("#key-name"))); err != nil || name != `YubiKey\safe A` {
		t.Errorf("the refused name is not kept to correct: %q (%v)", name, err)
	}
	checkPage(t, ctx, "enroll-error")
	attrsAre(t, ctx, ".alert.error", map[string]string{"role": "alert"})
	browserStep(t, ctx, "Tab to the name", key(kb.Tab))
	focusIs(t, ctx, "#key-name")
	browserStep(t, ctx, "replace the name", key(kb.End), key(strings.Repeat(kb.Backspace, len(`YubiKey\safe A`))),
		key("YubiKey, safe A"), key(kb.Tab))
	focusIs(t, ctx, "#bg-key-start")
	browserStep(t, ctx, "press Space on the button", key(" "), waitText("Security key registered"))
	line, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#bg-line-caddyfile")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(line, `webauthn_key "YubiKey, safe A" `) {
		t.Fatalf("the enrolment page printed %q", line)
	}

	// The key in the config, the only factor.
	c.stop()
	c, base = keyCaddy(t, mp, storage, "webauthn", line, "")
	browserStep(t, ctx, "open the login page", chromedp.Navigate(base+"/admin/?break_glass=logout"),
		chromedp.WaitVisible(chromedp.CSS("#email")))
	loginByKeyboard(t, ctx, "ops@example.com", "INC-4 keyboard", chromedp.WaitVisible(chromedp.CSS("#bg-key-start")))
	browserStep(t, ctx, "Tab to the key's button", key(kb.Tab))
	focusIs(t, ctx, "#bg-key-start")
	browserStep(t, ctx, "press Enter on the key's button", key(kb.Enter), waitText("Admin area. Signed in as ops@example.com."))
	c.waitLog(t, "break-glass login succeeded", map[string]string{"second_factor": "webauthn", "key": "YubiKey, safe A", "reason": "INC-4 keyboard"})
}

// TestBrowserPagesAccessibleWithTOTPAndMaxUses checks the pages of a site
// with an authenticator and max_uses 1: the code page that mentions the
// authenticator, a wrong code, a plain message page (an unknown form step,
// answered 400) and the page of a spent credential.
func TestBrowserPagesAccessibleWithTOTPAndMaxUses(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	var totp struct{ Secret string }
	if err := json.Unmarshal([]byte(stdout(t, "break-glass", "totp", "--email", "ops@example.com", "--json")), &totp); err != nil {
		t.Fatal(err)
	}
	// Its own storage: the count of uses lives there, and another test's
	// site with the same credential must not find it spent.
	c := startCaddy(t, fmt.Sprintf(`{
	admin {ADMIN}
	storage file_system %s
	break_glass {
		smtp %s {
			tls none
			from "Break Glass <breakglass@example.com>"
		}
	}
}
:{PORT} {
	bind 127.0.0.1
	break_glass /admin* {
		email ops@example.com
		hash {env.BG_HASH}
		allowed_ips 127.0.0.1
		require_reason
		totp_secret {env.BG_TOTP}
		max_uses 1
	}
	respond /admin* "Admin area" 200
}
`, filepath.Join(t.TempDir(), "storage"), mp.smtp), "caddyfile", "BG_TOTP="+totp.Secret)
	ctx := browser(t)
	do := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			t.Fatalf("%s: %v\npage: %s", what, err, bodyText(t, ctx))
		}
	}

	do("open the guarded URL", chromedp.Navigate(c.base+"/admin/"), chromedp.WaitVisible(chromedp.CSS("#email")))
	if req, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector("#reason").required`)); err != nil || !req {
		t.Fatalf("require_reason: the reason field is not required (%v)", err)
	}
	checkPage(t, ctx, "login-reason-required")
	do("sign in with the password",
		chromedp.SendKeys(chromedp.CSS("#email"), "ops@example.com"),
		chromedp.SendKeys(chromedp.CSS("#password"), testPassword),
		chromedp.SendKeys(chromedp.CSS("#reason"), "INC-3 pages\n"),
		chromedp.WaitVisible(chromedp.CSS("#code")))
	if txt := bodyText(t, ctx); !strings.Contains(txt, "authenticator app") {
		t.Fatalf("the code page does not mention the authenticator: %q", txt)
	}
	checkPage(t, ctx, "code-totp")

	// A wrong code: neither the mailed one nor an authenticator code near now.
	code, _ := mp.waitCode(t, map[string]bool{})
	near := map[string]bool{code: true}
	for d := -2; d <= 2; d++ {
		near[totpNow(t, totp.Secret, time.Now().Add(time.Duration(d)*30*time.Second))] = true
	}
	wrong := "000000"
	for i := 1; near[wrong]; i++ {
		wrong = fmt.Sprintf("%06d", i*111111%1000000)
	}
	do("a wrong code", chromedp.SendKeys(chromedp.CSS("#code"), wrong+"\n"), waitText("Wrong code"))
	checkPage(t, ctx, "code-error")
	attrsAre(t, ctx, ".alert.error", map[string]string{"role": "alert"})

	// A plain message page, as Caddy serves it: the form posted with a
	// step the handler does not know.
	do("post an unknown step", chromedp.Evaluate[chromedp.Void](
		`document.querySelector("input[name=break_glass_step]").value = "unknown"; document.forms[0].submit()`),
		waitText("Unknown form step"))
	checkPage(t, ctx, "message")
	attrsAre(t, ctx, ".alert.error", map[string]string{"role": "alert"})

	do("back to the code page", chromedp.Navigate(c.base+"/admin/"), chromedp.WaitVisible(chromedp.CSS("#code")))
	do("the right code", chromedp.SendKeys(chromedp.CSS("#code"), code+"\n"), waitText("Admin area"))

	// max_uses 1: spent now, for this browser too once it signs out.
	do("log out", chromedp.Navigate(c.base+"/admin/?break_glass=logout"), chromedp.WaitVisible(chromedp.CSS("#password")))
	do("the guarded URL again", chromedp.Navigate(c.base+"/admin/"), waitText("Credential spent"))
	if txt := bodyText(t, ctx); !strings.Contains(txt, "max_uses") {
		t.Fatalf("spent page: %q", txt)
	}
	checkPage(t, ctx, "spent")
	attrsAre(t, ctx, ".alert.error", map[string]string{"role": "alert"})
}
