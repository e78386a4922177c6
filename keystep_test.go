package breakglass

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/go-webauthn/webauthn/protocol"
)

var (
	keyOptionsRE = regexp.MustCompile(`(?s)<script type="application/json" id="bg-key-options" data-ceremony="(get|create)"[^>]*>(.*?)</script>`)
	configLineRE = regexp.MustCompile(`(?s)<pre id="bg-line-caddyfile"[^>]*>(.*?)</pre>`)
)

// keyOptions reads the WebAuthn options a page carries for its ceremony.
func keyOptions(t *testing.T, body, ceremony string) []byte {
	t.Helper()
	m := keyOptionsRE.FindStringSubmatch(body)
	if m == nil || m[1] != ceremony {
		t.Fatalf("no %s options on the page:\n%s", ceremony, body)
	}
	return []byte(m[2])
}

// enrolKey signs c's browser in (by code), enrols k on the enrolment page
// and returns the config line the page gave.
func enrolKey(t *testing.T, h testHandler, c *bgtest.Client, k *softKey, name string) WebAuthnKeyConfig {
	t.Helper()
	if r := h.signInAt(t, c); r.Status != http.StatusSeeOther {
		t.Fatalf("sign-in by code: %d", r.Status)
	}
	page := c.Get("/admin/?break_glass=enroll")
	if page.Status != http.StatusOK || !strings.Contains(page.Header.Get("Content-Security-Policy"), "script-src 'sha256-") {
		t.Fatalf("enrolment page: %d, CSP %q", page.Status, page.Header.Get("Content-Security-Policy"))
	}
	var opts protocol.PublicKeyCredentialCreationOptions
	if err := json.Unmarshal(keyOptions(t, page.Body, "create"), &opts); err != nil {
		t.Fatal(err)
	}
	body := k.create(t, c.Base, &protocol.CredentialCreation{Response: opts})
	r := c.Do("POST", "/admin/?break_glass=enroll", url.Values{"break_glass_step": {"enroll"}, "csrf_token": {page.CSRF(t)},
		"name": {name}, "credential": {string(body)}}, nil)
	if r.Status != http.StatusOK || !strings.Contains(r.Body, "Security key registered") {
		t.Fatalf("enrolment: %d\n%s", r.Status, r.Body)
	}
	if csp := r.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'sha256-") {
		t.Fatalf("the enrolled page's copy buttons have no script: CSP %q", csp)
	}
	m := configLineRE.FindStringSubmatch(r.Body)
	if m == nil {
		t.Fatalf("no config line:\n%s", r.Body)
	}
	d := caddyfile.NewTestDispenser(html.UnescapeString(m[1]))
	d.Next()
	cfg, err := unmarshalWebAuthnKey(d)
	if err != nil {
		t.Fatalf("the printed line %q: %v", m[1], err)
	}
	return cfg
}

// keyPage gives the password from c and returns the key page and the
// options it carries.
func keyPage(t *testing.T, c *bgtest.Client) (bgtest.Reply, *protocol.CredentialAssertion) {
	t.Helper()
	if r := c.Login("/admin/", "ops@example.com", testPassword, "INC-5", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("password: %d", r.Status)
	}
	page := c.Get("/admin/")
	var opts protocol.CredentialAssertion
	if err := json.Unmarshal(keyOptions(t, page.Body, "get"), &opts.Response); err != nil {
		t.Fatal(err)
	}
	return page, &opts
}

// keySignIn gives the password from c, answers the page's key challenge
// with k, and returns the answer to the key step and the body it posted.
func keySignIn(t *testing.T, c *bgtest.Client, k *softKey) (bgtest.Reply, []byte) {
	t.Helper()
	page, opts := keyPage(t, c)
	body := k.get(t, c.Base, opts)
	return postKey(t, c, page, body), body
}

func postKey(t *testing.T, c *bgtest.Client, page bgtest.Reply, body []byte) bgtest.Reply {
	t.Helper()
	return c.Do("POST", "/admin/", url.Values{"break_glass_step": {"webauthn"}, "csrf_token": {page.CSRF(t)}, "credential": {string(body)}}, nil)
}

// keyConfig is k's line in the account ops@example.com, as an enrolment on
// k's RP ID prints it. It is made without the door, so that a test can
// hold keys of any RP ID.
func keyConfig(t *testing.T, k *softKey, name string) WebAuthnKeyConfig {
	t.Helper()
	origin := "https://" + k.rpID
	rp, err := newRelyingParty(k.rpID, []string{origin}, "", "")
	if err != nil {
		t.Fatal(err)
	}
	handle, challenge := webauthnUserHandle("ops@example.com"), waChallenge(t)
	opts, err := rp.creationOptions(challenge, handle, "ops@example.com", nil, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var creation protocol.CredentialCreation
	if err := json.Unmarshal(opts, &creation.Response); err != nil {
		t.Fatal(err)
	}
	cfg, err := rp.verifyCreation(challenge, handle, now().Add(time.Minute), k.create(t, origin, &creation), name, nil)
	if err != nil {
		t.Fatalf("enrolling %s: %v", name, err)
	}
	return cfg
}

// keyHandler guards /admin/ with the account ops@example.com, which signs
// in with the keys of lines only; mod, if not nil, changes the rest.
func keyHandler(t *testing.T, app *App, lines []WebAuthnKeyConfig, mod func(*Handler)) testHandler {
	t.Helper()
	return newTestHandler(t, app, func(h *Handler) {
		h.Email, h.Hash = "", ""
		h.Accounts = []AccountConfig{{Email: "ops@example.com", Hash: testHash(t, 5), WebAuthnKeys: lines, SecondFactor: []string{"webauthn"}}}
		if mod != nil {
			mod(h)
		}
	})
}

// remaining is how many attempts c's address has left on h.
func remaining(h testHandler, c *bgtest.Client) int {
	return h.state.limiter.remaining(limiterKey(netip.MustParseAddr(c.Name)), h.app.lim)
}

// TestAKeyEnrolledOnTheDoorSignsInOnceItIsInTheConfig: a signed-in operator
// enrols a key; the key signs in only once its printed line is in the
// account's config; the enrolment is alerted and audited, the login names
// the key; the same answer posted again is refused and counted.
func TestAKeyEnrolledOnTheDoorSignsInOnceItIsInTheConfig(t *testing.T) {
	app := testApp(t, &App{MaxAttempts: 5})
	hook := bgtest.StartWebhook(t)
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	h := newTestHandler(t, app, func(h *Handler) { h.AlertWebhook, h.AuditLog = hook.URL, audit })
	t.Cleanup(func() { _ = h.Cleanup() })
	k := newSoftKey(t, "example.com")
	c := h.tlsClient(t, "192.0.2.5")
	cfg := enrolKey(t, h, c, k, `YubiKey "A", safe 1`)
	if cfg.Name != `YubiKey "A", safe 1` {
		t.Errorf("name %q", cfg.Name)
	}
	if ev := hook.WaitEvent(t, eventKeyEnrolled).JSON; ev["account"] != "ops@example.com" {
		t.Errorf("enrolment alert: %v", ev)
	}
	if lines := enrolmentsAudited(t, audit); len(lines) != 1 || lines[0]["email"] != "ops@example.com" ||
		lines[0]["client"] != "192.0.2.5" || lines[0]["detail"] != `key YubiKey "A", safe 1` {
		t.Errorf("enrolment audit lines: %v", lines)
	}
	// Not in the config yet: the second-factor page offers no key.
	c2 := h.tlsClient(t, "192.0.2.6")
	c2.Login("/admin/", "ops@example.com", testPassword, "", nil)
	if p := c2.Get("/admin/"); strings.Contains(p.Body, "bg-key-options") {
		t.Fatal("a key not in the config is offered")
	}

	// The line in the config: the key signs in.
	h2 := newTestHandler(t, app, func(h *Handler) {
		h.Email, h.Hash, h.AlertWebhook = "", "", hook.URL
		h.Accounts = []AccountConfig{{Email: "ops@example.com", Hash: testHash(t, 5), WebAuthnKeys: []WebAuthnKeyConfig{cfg},
			SecondFactor: []string{"webauthn"}}}
	})
	c3 := h2.tlsClient(t, "192.0.2.7")
	r, body := keySignIn(t, c3, k)
	if r.Status != http.StatusSeeOther {
		t.Fatalf("key step: %d\n%s", r.Status, r.Body)
	}
	if got := c3.Get("/admin/"); got.Header.Get("X-Upstream") != "reached" {
		t.Fatalf("signed in with the key: %d", got.Status)
	}
	if h2.logs.Logs().Find("break-glass login succeeded", map[string]string{"second_factor": "webauthn", "key": cfg.Name}) == nil {
		t.Error("the login line does not name the key")
	}
	if n := len(h2.logs.Logs().All("break-glass code (dev_log_code)")); n != 0 {
		t.Errorf("a webauthn-only account was issued %d codes", n)
	}

	// The same answer again, on a new sign-in: refused, a failed attempt.
	c4 := h2.tlsClient(t, "192.0.2.8")
	c4.Login("/admin/", "ops@example.com", testPassword, "", nil)
	page := c4.Get("/admin/")
	if r := postKey(t, c4, page, body); r.Status != http.StatusUnauthorized {
		t.Fatalf("replayed answer: %d", r.Status)
	}
	if h2.logs.Logs().Find("break-glass security key refused", map[string]string{"reason": "webauthn_refused"}) == nil {
		t.Error("no log line of the refused key")
	}
	if rem := h2.state.limiter.remaining(limiterKey(netip.MustParseAddr("192.0.2.8")), h2.app.lim); rem != 4 {
		t.Errorf("attempts left after a refused key: %d, want 4", rem)

	}

	// Signed in with it, the same key cannot be enrolled again.
	page = c3.Get("/admin/?break_glass=enroll")
	var copts protocol.PublicKeyCredentialCreationOptions
	if err := json.Unmarshal(keyOptions(t, page.Body, "create"), &copts); err != nil {
		t.Fatal(err)
	}
	if len(copts.CredentialExcludeList) != 1 {
		t.Errorf("the enrolled key is not excluded: %+v", copts.CredentialExcludeList)
	}
	again := k.create(t, c3.Base, &protocol.CredentialCreation{Response: copts})
	if r := c3.Do("POST", "/admin/?break_glass=enroll", url.Values{"break_glass_step": {"enroll"}, "csrf_token": {page.CSRF(t)},
		"name": {"again"}, "credential": {string(again)}}, nil); r.Status != http.StatusBadRequest || !strings.Contains(r.Body, "already registered") {
		t.Errorf("the same key enrolled twice: %d\n%s", r.Status, r.Body)
	}

	// A key whose counter goes back (a copy of it signed since): refused,
	// alerted, and refused from then on even with a counter that goes up.
	k.counter = 1
	c5 := h2.tlsClient(t, "192.0.2.9")
	if r, _ := keySignIn(t, c5, k); r.Status != http.StatusUnauthorized || !strings.Contains(r.Body, "a copy of it may exist") {
		t.Fatalf("lowered counter: %d\n%s", r.Status, r.Body)
	}
	if ev := hook.WaitEvent(t, eventKeyCloned).JSON; ev["severity"] != "critical" || ev["account"] != "ops@example.com" {
		t.Errorf("clone alert: %v", ev)
	}
	k.counter = 1000
	c6 := h2.tlsClient(t, "192.0.2.10")
	if r, _ := keySignIn(t, c6, k); r.Status != http.StatusUnauthorized {
		t.Fatalf("a key with a clone warning signed in: %d", r.Status)
	}

	// Another account's key (never enrolled for this one) is refused.
	other := newSoftKey(t, "example.com")
	c7 := h2.tlsClient(t, "192.0.2.11")
	if r, _ := keySignIn(t, c7, other); r.Status != http.StatusUnauthorized || !strings.Contains(r.Body, "not one of this account's keys") {
		t.Fatalf("an unknown key: %d\n%s", r.Status, r.Body)
	}
}

// enrolmentsAudited are the key_enrolled lines of the audit file at path.
func enrolmentsAudited(t *testing.T, path string) bgtest.Logs {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bgtest.ReadLogs(bytes.NewReader(b)).Where(func(m map[string]any) bool { return m["event"] == auditKeyEnrolled })
}

// TestAnEnrolmentPostWithoutItsPagesTokenIsRefused: a signed-in browser's
// enrolment post carrying a key's good answer but no token, or the token
// of another form or session, gets 403 and enrols nothing (no config line,
// alert or audit line): another site cannot make the browser enrol a key.
// The same answer with the page's token then enrols it, once.
func TestAnEnrolmentPostWithoutItsPagesTokenIsRefused(t *testing.T) {
	hook := bgtest.StartWebhook(t)
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	h := newTestHandler(t, nil, func(h *Handler) { h.AlertWebhook, h.AuditLog = hook.URL, audit })
	t.Cleanup(func() { _ = h.Cleanup() })
	enrolPage := func(c *bgtest.Client) bgtest.Reply {
		t.Helper()
		if r := h.signInAt(t, c); r.Status != http.StatusSeeOther {
			t.Fatalf("sign-in by code: %d", r.Status)
		}
		return c.Get("/admin/?break_glass=enroll")
	}
	other := enrolPage(h.tlsClient(t, "192.0.2.6")).CSRF(t)
	c := h.tlsClient(t, "192.0.2.5")
	login := c.Get("/admin/").CSRF(t)
	page := enrolPage(c)
	var opts protocol.PublicKeyCredentialCreationOptions
	if err := json.Unmarshal(keyOptions(t, page.Body, "create"), &opts); err != nil {
		t.Fatal(err)
	}
	answer := newSoftKey(t, "example.com").create(t, c.Base, &protocol.CredentialCreation{Response: opts})
	post := func(token string) bgtest.Reply {
		return c.Do("POST", "/admin/?break_glass=enroll", url.Values{"break_glass_step": {"enroll"}, "csrf_token": {token},
			"name": {"safe A"}, "credential": {string(answer)}}, nil)
	}
	for _, tc := range []struct{ name, token string }{
		{"no token", ""},
		{"the login form's token", login},
		{"another session's enrolment token", other},
	} {
		if r := post(tc.token); r.Status != http.StatusForbidden || !strings.Contains(r.Body, "did not come from this page") ||
			configLineRE.MatchString(r.Body) {
			t.Errorf("%s: %d\n%s", tc.name, r.Status, r.Body)
		}
	}
	if lines := enrolmentsAudited(t, audit); len(lines) != 0 {
		t.Fatalf("refused enrolments audited: %v", lines)
	}
	if r := post(page.CSRF(t)); r.Status != http.StatusOK || !configLineRE.MatchString(r.Body) {
		t.Fatalf("with the page's token: %d\n%s", r.Status, r.Body)
	}
	hook.WaitEvent(t, eventKeyEnrolled)
	if n := hook.Count(eventKeyEnrolled); n != 1 {
		t.Errorf("%d enrolment alerts, want 1", n)
	}
	if lines := enrolmentsAudited(t, audit); len(lines) != 1 {
		t.Errorf("enrolment audit lines: %v", lines)
	}
}

// TestOneKeyInTwoAccountsIsRefusedAtLoad: a key is one custodian's; the
// same credential in two accounts would also share one sign counter.
func TestOneKeyInTwoAccountsIsRefusedAtLoad(t *testing.T) {
	key := waConfig(t, newSoftKey(t, "localhost"), "shared")
	h := &Handler{Accounts: []AccountConfig{
		{Email: "alice@example.com", Hash: testHash(t, 4), WebAuthnKeys: []WebAuthnKeyConfig{key}},
		{Email: "bob@example.com", Hash: testHash(t, 4), WebAuthnKeys: []WebAuthnKeyConfig{key}},
	}, DevLogCode: true}
	err := h.setup(testApp(t), zapNop())
	if err == nil || !strings.Contains(err.Error(), `account bob@example.com: webauthn_key "shared": the same key is enrolled for another account`) {
		t.Fatalf("error %v", err)
	}
}

// TestEveryKeyRefusalIsOneFailedAttempt: through the door, an answer the
// key step refuses costs the client exactly one attempt, whatever is wrong
// with it, and the page says which kind of refusal it was.
func TestEveryKeyRefusalIsOneFailedAttempt(t *testing.T) {
	app := testApp(t, &App{MaxAttempts: 5})
	key := newSoftKey(t, "example.com")
	otherRP := newSoftKey(t, "other.example") // in the config, but signing for another RP ID
	lowered := newSoftKey(t, "example.com")
	removed := newSoftKey(t, "example.com")
	lines := []WebAuthnKeyConfig{keyConfig(t, key, "key"), keyConfig(t, otherRP, "other RP"), keyConfig(t, lowered, "lowered")}
	h := keyHandler(t, app, append(slices.Clone(lines), keyConfig(t, removed, "removed")), nil)

	// Each key that is refused below for what happened since signs in first:
	// an answer to replay, a sign count to go below, a key that worked
	// before its line was taken out.
	lowered.counter = 10
	var replay []byte
	for i, k := range []*softKey{key, lowered, removed} {
		r, body := keySignIn(t, h.tlsClient(t, fmt.Sprintf("192.0.2.%d", 10+i)), k)
		if r.Status != http.StatusSeeOther {
			t.Fatalf("key %d before: %d\n%s", i, r.Status, r.Body)
		}
		if k == key {
			replay = body
		}
	}
	lowered.counter = 3
	h = keyHandler(t, app, lines, nil) // the config without the removed key's line

	for i, tc := range []struct {
		name   string
		key    *softKey
		origin string // where the key answers; "": the page's origin
		replay []byte // posted instead of key's answer
		page   string // on the page
		logged string // in the log line's webauthn field: why
	}{
		{"wrong origin", key, "https://evil.example", nil, "answer was not accepted", "Error validating origin"},
		{"key of another RP ID", otherRP, "", nil, "answer was not accepted", "RP Hash mismatch"},
		{"replayed answer", nil, "", replay, "answer was not accepted", "Error validating challenge"},
		{"unknown key", newSoftKey(t, "example.com"), "", nil, "not one of this account's keys", "not enrolled for this account"},
		{"key removed from the config", removed, "", nil, "not one of this account's keys", "not enrolled for this account"},
		{"lowered sign counter", lowered, "", nil, "a copy of it may exist", "sign counter did not increase"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := h.tlsClient(t, fmt.Sprintf("192.0.2.%d", 20+i))
			page, opts := keyPage(t, c)
			answer := tc.replay
			if tc.key != nil {
				answer = tc.key.get(t, cmp.Or(tc.origin, c.Base), opts)
			}
			before := remaining(h, c)
			r := postKey(t, c, page, answer)
			if r.Status != http.StatusUnauthorized || !strings.Contains(r.Body, tc.page) {
				t.Fatalf("%d, want 401 saying %q\n%s", r.Status, tc.page, r.Body)
			}
			lines := h.logs.Logs().Where(func(m map[string]any) bool { return m["client_ip"] == c.Name && m["webauthn"] != nil })
			if len(lines) != 1 || !strings.Contains(fmt.Sprint(lines[0]["webauthn"]), tc.logged) {
				t.Errorf("refusal logged as %v, want one saying %q", lines, tc.logged)
			}
			if after := remaining(h, c); after != before-1 {
				t.Errorf("attempts left: %d, then %d; want one fewer", before, after)
			}
			if got := c.Get("/admin/"); got.Header.Get("X-Upstream") != "" {
				t.Error("signed in")
			}
		})
	}
}

// TestAKeyOfTheParentDomainSignsInOnTheOriginsConfigured: with
// webauthn_rp_id example.com and webauthn_origins https://admin.example.com,
// a key registered for example.com signs in on admin.example.com; on
// www.example.com, an origin not listed (though under the RP ID), its
// answer is refused and counted.
func TestAKeyOfTheParentDomainSignsInOnTheOriginsConfigured(t *testing.T) {
	k := newSoftKey(t, "example.com")
	h := keyHandler(t, testApp(t, &App{MaxAttempts: 5}), []WebAuthnKeyConfig{keyConfig(t, k, "key")}, func(h *Handler) {
		h.WebAuthnRPID, h.WebAuthnOrigins = "example.com", []string{"https://admin.example.com"}
	})
	at := func(ip, host string) *bgtest.Client {
		c := h.tlsClient(t, ip)
		c.Base = "https://" + host
		return c
	}
	c := at("192.0.2.30", "admin.example.com")
	if r, _ := keySignIn(t, c, k); r.Status != http.StatusSeeOther {
		t.Fatalf("key step on admin.example.com: %d\n%s", r.Status, r.Body)
	}
	if got := c.Get("/admin/"); got.Header.Get("X-Upstream") != "reached" {
		t.Fatalf("signed in with the key: %d", got.Status)
	}

	c = at("192.0.2.31", "www.example.com")
	page, opts := keyPage(t, c)
	if opts.Response.RelyingPartyID != "example.com" {
		t.Errorf("the options' rpId: %q", opts.Response.RelyingPartyID)
	}
	before := remaining(h, c)
	if r := postKey(t, c, page, k.get(t, c.Base, opts)); r.Status != http.StatusUnauthorized || !strings.Contains(r.Body, "answer was not accepted") {
		t.Fatalf("an answer on www.example.com: %d\n%s", r.Status, r.Body)
	}
	if after := remaining(h, c); after != before-1 {
		t.Errorf("attempts left: %d, then %d; want one fewer", before, after)
	}
	line := h.logs.Logs().Find("break-glass security key refused", map[string]string{"client_ip": c.Name})
	if !strings.Contains(fmt.Sprint(line["webauthn"]), "Error validating origin") {
		t.Errorf("refusal logged as %v, want one of the origin", line)
	}
}

// TestAKeyOnlyAccountOpenedByIPAddressIsToldToUseTheSiteName: WebAuthn
// needs a domain, so at an IP address a key-only account has no factor;
// the refusal (a failed attempt, as for any request without a factor) says
// to open the site by its name, where the key is offered.
func TestAKeyOnlyAccountOpenedByIPAddressIsToldToUseTheSiteName(t *testing.T) {
	h := keyHandler(t, testApp(t, &App{MaxAttempts: 5}), []WebAuthnKeyConfig{keyConfig(t, newSoftKey(t, "example.com"), "key")}, nil)
	c := h.tlsClient(t, "192.0.2.40")
	c.Base = "https://192.0.2.1"
	before := remaining(h, c)
	r := c.Login("/admin/", "ops@example.com", testPassword, "", nil)
	if r.Status != http.StatusUnauthorized || !strings.Contains(r.Body, "No second factor here") ||
		!strings.Contains(r.Body, "open this site by its name, not its IP address") || strings.Contains(r.Body, "certificate") {
		t.Fatalf("at an IP address: %d\n%s", r.Status, r.Body)
	}
	if after := remaining(h, c); after != before-1 {
		t.Errorf("attempts left: %d, then %d; want one fewer", before, after)
	}
	keyPage(t, h.tlsClient(t, "192.0.2.41")) // by name: the key is offered
}
