//go:build e2e

// Scenario 1: a person in a real browser (headless Chromium).

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browser starts headless Chromium (Debian's package) with a fresh profile.
func browser(t *testing.T) context.Context {
	t.Helper()
	bin := os.Getenv("CHROMIUM")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("chromium"); err != nil {
			t.Fatal("chromium is not installed (apt-get install -y chromium)")
		}
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelA() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// waitText waits until the page's text contains s.
func waitText(s string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		for {
			txt, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
			if err == nil && strings.Contains(txt, s) {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for %q: %w", s, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
}

func bodyText(t *testing.T, ctx context.Context) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestBrowserSignInCodeLogoutAndTheRefusalPages(t *testing.T) {
	mp, smtpInner := tlsMailpit(t) // STARTTLS with AUTH, trusting the test's own CA
	s := defaultSite(mp)
	s.smtpInner = smtpInner
	c := startCaddy(t, s.caddyfile(), "caddyfile", "BG_SMTP_PASSWORD=s3cret")
	ctx := browser(t)
	step := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			t.Fatalf("%s: %v\npage: %s", what, err, bodyText(t, ctx))
		}
	}

	// The guarded URL shows the login page.
	step("open the guarded URL", chromedp.Navigate(c.base+"/admin/dashboard?tab=users"), chromedp.WaitVisible(chromedp.CSS("#email")))
	checkPage(t, ctx, "login")
	attrsAre(t, ctx, "#email", map[string]string{"type": "email", "autocomplete": "username"})
	attrsAre(t, ctx, "#password", map[string]string{"type": "password", "autocomplete": "current-password"})
	attrsAre(t, ctx, "label[for=reason] .hint", nil) // "(optional)", inside the label

	// Email, password and a reason, by keyboard.
	step("type email, password and reason",
		chromedp.SendKeys(chromedp.CSS("#email"), "ops@example.com"),
		chromedp.SendKeys(chromedp.CSS("#password"), testPassword),
		chromedp.SendKeys(chromedp.CSS("#reason"), "INC-1 browser test\n"),
		chromedp.WaitVisible(chromedp.CSS("#code")))
	checkPage(t, ctx, "code")
	attrsAre(t, ctx, "#code", map[string]string{"autocomplete": "one-time-code", "inputmode": "numeric"})

	// The code from the mailbox.
	code, mail := mp.waitCode(t, map[string]bool{})
	if !strings.Contains(mail.Text, "127.0.0.1") {
		t.Errorf("the code mail does not name the client: %q", mail.Text)
	}
	step("type the code", chromedp.SendKeys(chromedp.CSS("#code"), code+"\n"), waitText("Admin area"))
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	if loc != c.base+"/admin/dashboard?tab=users" {
		t.Errorf("landed on %s, not on the URL first asked for", loc)
	}
	if txt := bodyText(t, ctx); !strings.Contains(txt, "Signed in as ops@example.com (break-glass: true)") {
		t.Errorf("upstream page: %q", txt)
	}
	c.waitLog(t, "break-glass login succeeded", map[string]string{"reason": "INC-1 browser test"})

	// Logout, and the login page again.
	step("log out", chromedp.Navigate(c.base+"/admin/?break_glass=logout"), chromedp.WaitVisible(chromedp.CSS("#password")))
	if txt := bodyText(t, ctx); !strings.Contains(txt, "signed out") {
		t.Errorf("after logout: %q", txt)
	}
	checkPage(t, ctx, "signed-out")
	attrsAre(t, ctx, ".alert.info", map[string]string{"role": "status"})
	step("the guarded URL again", chromedp.Navigate(c.base+"/admin/dashboard"), chromedp.WaitVisible(chromedp.CSS("#password")))

	// The forbidden page: /restricted is for another network.
	step("open a path this client may not use", chromedp.Navigate(c.base+"/restricted/"), waitText("not available from your network address"))
	checkPage(t, ctx, "forbidden")

	// The locked-out page, after max_attempts wrong passwords.
	step("back to the login page", chromedp.Navigate(c.base+"/admin/"), chromedp.WaitVisible(chromedp.CSS("#password")),
		chromedp.SendKeys(chromedp.CSS("#email"), "ops@example.com"))
	for i := range s.maxAttempts {
		want := "Too many failed attempts"
		if left := s.maxAttempts - i - 1; left > 0 {
			want = fmt.Sprintf("Wrong email or password. %d attempt", left)
		}
		// The failed page keeps the email and clears the password.
		step(fmt.Sprintf("wrong password %d", i+1),
			chromedp.SendKeys(chromedp.CSS("#password"), "not the password\n"),
			waitText(want))
		if i == 0 {
			checkPage(t, ctx, "login-error")
			attrsAre(t, ctx, ".alert.error", map[string]string{"role": "alert"})
		}
	}
	if txt := bodyText(t, ctx); !strings.Contains(txt, "Too many failed attempts") {
		t.Fatalf("not locked out after %d wrong passwords: %q", s.maxAttempts, txt)
	}
	checkPage(t, ctx, "locked")
	attrsAre(t, ctx, ".alert.error", map[string]string{"role": "alert"})
}
