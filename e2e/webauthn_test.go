//go:build e2e

// Security keys in a real browser: headless Chromium with a virtual
// authenticator (the DevTools protocol's WebAuthn domain) on
// http://localhost, a secure context with a domain as WebAuthn needs.

package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/webauthn"
	"github.com/chromedp/chromedp"
)

// virtualKey gives the browser's tab a CTAP2 security key with user
// verification, that answers at once (no touch is simulated as missing).
func virtualKey(t *testing.T, ctx context.Context) webauthn.AuthenticatorID {
	t.Helper()
	if _, err := chromedp.Call(ctx, webauthn.Enable, webauthn.EnableParams{}); err != nil {
		t.Fatalf("WebAuthn.enable: %v", err)
	}
	res, err := chromedp.Call(ctx, webauthn.AddVirtualAuthenticator, webauthn.AddVirtualAuthenticatorParams{
		Options: &webauthn.VirtualAuthenticatorOptions{
			Protocol: webauthn.AuthenticatorProtocolCtap2, Ctap2version: webauthn.Ctap2versionCtap21,
			Transport: webauthn.AuthenticatorTransportUsb, HasResidentKey: true, HasUserVerification: true,
			IsUserVerified: true, AutomaticPresenceSimulation: true,
		}})
	if err != nil {
		t.Fatalf("WebAuthn.addVirtualAuthenticator: %v", err)
	}
	return res.AuthenticatorID
}

// keyCredential is the one credential the virtual key id holds.
func keyCredential(t *testing.T, ctx context.Context, id webauthn.AuthenticatorID) *webauthn.Credential {
	t.Helper()
	res, err := chromedp.Call(ctx, webauthn.GetCredentials, webauthn.GetCredentialsParams{AuthenticatorID: id})
	if err != nil {
		t.Fatalf("WebAuthn.getCredentials: %v", err)
	}
	if len(res.Credentials) != 1 {
		t.Fatalf("the virtual key holds %d credentials, want 1", len(res.Credentials))
	}
	return res.Credentials[0]
}

// replaceCredential puts cred in the virtual key id in place of the
// credential with its ID, as a copy of the key with other values would be.
func replaceCredential(t *testing.T, ctx context.Context, id webauthn.AuthenticatorID, cred webauthn.Credential) {
	t.Helper()
	if _, err := chromedp.Call(ctx, webauthn.RemoveCredential, webauthn.RemoveCredentialParams{AuthenticatorID: id, CredentialID: cred.CredentialID}); err != nil {
		t.Fatalf("WebAuthn.removeCredential: %v", err)
	}
	if _, err := chromedp.Call(ctx, webauthn.AddCredential, webauthn.AddCredentialParams{AuthenticatorID: id, Credential: &cred}); err != nil {
		t.Fatalf("WebAuthn.addCredential: %v", err)
	}
}

// keySite is a Caddyfile with two accounts on http://localhost:{PORT}:
// ops takes opsFactors and has opsKeys (webauthn_key lines), bob has
// bobKeys; the sign counters are in storage, kept across restarts.
func keySite(mp *mailpit, storage, opsFactors, opsKeys, bobKeys string) string {
	return fmt.Sprintf(`{
	admin {ADMIN}
	storage file_system %s
	break_glass {
		smtp %s {
			tls none
			from "Break Glass <breakglass@example.com>"
		}
	}
}

http://localhost:{PORT} {
	bind 127.0.0.1
	break_glass /admin* {
		account ops@example.com {
			hash {env.BG_HASH}
			second_factor %s
			%s
		}
		account bob@example.com {
			hash {env.BG_HASH}
			%s
		}
		alert_emails sec@example.com
	}
	respond /admin* "Admin area. Signed in as {http.auth.user.id}." 200
}
`, storage, mp.smtp, opsFactors, opsKeys, bobKeys)
}

// browserStep runs actions, failing the test with the page's text.
// keyCaddy starts a Caddy on keySite's config and returns it with its
// base URL, by the name localhost (a secure context for WebAuthn).
func keyCaddy(t *testing.T, mp *mailpit, storage, factors, line, bobLine string) (*caddy, string) {
	t.Helper()
	c := startCaddy(t, keySite(mp, storage, factors, line, bobLine), "caddyfile")
	return c, fmt.Sprintf("http://localhost:%d", c.port)
}

func browserStep(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		t.Fatalf("%s: %v\npage: %s", what, err, bodyText(t, ctx))
	}
}

// enrolInBrowser signs email in by code from the browser at base, opens
// the enrolment page, registers the tab's virtual key as name and returns
// the config line the page printed.
func enrolInBrowser(t *testing.T, ctx context.Context, base string, mp *mailpit, seen map[string]bool, email, name string, shots bool) string {
	t.Helper()
	browserStep(t, ctx, "open the enrolment page signed out", chromedp.Navigate(base+"/admin/?break_glass=enroll"),
		chromedp.WaitVisible(chromedp.CSS("#email")),
		chromedp.SendKeys(chromedp.CSS("#email"), email),
		chromedp.SendKeys(chromedp.CSS("#password"), testPassword+"\n"),
		chromedp.WaitVisible(chromedp.CSS("#code")))
	msg := mp.waitMail(t, email, "one-time code", seen)
	code := codeRE.FindStringSubmatch(msg.Text)
	if code == nil {
		t.Fatalf("no code in %q", msg.Text)
	}
	browserStep(t, ctx, "type the code", chromedp.SendKeys(chromedp.CSS("#code"), code[1]+"\n"),
		chromedp.WaitVisible(chromedp.CSS("#key-name")), chromedp.WaitVisible(chromedp.CSS("#bg-key-start")))
	if shots {
		checkPage(t, ctx, "enroll")
	}
	browserStep(t, ctx, "register the key", chromedp.SendKeys(chromedp.CSS("#key-name"), name),
		chromedp.Click(chromedp.CSS("#bg-key-start")), waitText("Security key registered"))
	if shots {
		checkPage(t, ctx, "enrolled")
	}
	line, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#bg-line-caddyfile")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(line, "webauthn_key ") {
		t.Fatalf("the enrolment page printed %q", line)
	}
	mp.waitMail(t, "sec@example.com", "Security key enrolled", seen)
	return line
}

// keySignInInBrowser signs ops in with the password and the tab's key.
func keySignInInBrowser(t *testing.T, ctx context.Context, base string, shots bool) {
	t.Helper()
	browserStep(t, ctx, "password", chromedp.Navigate(base+"/admin/?break_glass=logout"),
		chromedp.WaitVisible(chromedp.CSS("#email")),
		chromedp.SendKeys(chromedp.CSS("#email"), "ops@example.com"),
		chromedp.SendKeys(chromedp.CSS("#password"), testPassword+"\n"),
		chromedp.WaitVisible(chromedp.CSS("#bg-key-start")))
	if txt := bodyText(t, ctx); strings.Contains(txt, "code was sent") {
		t.Errorf("a webauthn-only account's page speaks of a mailed code: %q", txt)
	}
	if shots {
		checkPage(t, ctx, "key")
	}
	browserStep(t, ctx, "use the key", chromedp.Click(chromedp.CSS("#bg-key-start")), waitText("Admin area. Signed in as ops@example.com."))
}

// TestBrowserEnrolsAKeyAndSignsInWithIt: a custodian signs in by code,
// enrols the browser's security key on the enrolment page, and, once the
// printed line is in the config (as the only factor), signs in with the
// key, and again after a restart; the status lists the key by name with its
// counter; the key of another account does not open this one.
func TestBrowserEnrolsAKeyAndSignsInWithIt(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	storage := filepath.Join(t.TempDir(), "storage")
	seen := map[string]bool{}
	c, base := keyCaddy(t, mp, storage, "webauthn email", "", "")
	ctx := browser(t)
	virtualKey(t, ctx)
	line := enrolInBrowser(t, ctx, base, mp, seen, "ops@example.com", "Virtual key A", true)

	// The line in the config, webauthn the only factor: the key signs in,
	// and no code is mailed.
	c.stop()
	c, base = keyCaddy(t, mp, storage, "webauthn", line, "")
	mails := len(mp.messages(t))
	keySignInInBrowser(t, ctx, base, true)
	c.waitLog(t, "break-glass login succeeded", map[string]string{"email": "ops@example.com", "second_factor": "webauthn", "key": "Virtual key A"})

	// After a restart (a new process on the same storage), again.
	c.stop()
	c, base = keyCaddy(t, mp, storage, "webauthn", line, "")
	keySignInInBrowser(t, ctx, base, false)
	c.waitLog(t, "break-glass login succeeded", map[string]string{"second_factor": "webauthn"})
	st := stdout(t, "break-glass", "status", "--address", c.admin)
	if !strings.Contains(st, `"Virtual key A"`) || !strings.Contains(st, "webauthn") {
		t.Errorf("status does not list the key:\n%s", st)
	}
	for _, m := range mp.messages(t)[:len(mp.messages(t))-mails] {
		if strings.Contains(m.Subject, "one-time code") {
			t.Errorf("a code was mailed to a webauthn-only account: %q", m.Subject)
		}
	}

	// Bob enrols a key of his own in another browser; that key does not
	// open ops' account: the browser finds none of ops' keys on it.
	bobCtx := browser(t)
	virtualKey(t, bobCtx)
	c.stop()
	c, base = keyCaddy(t, mp, storage, "webauthn", line, "")
	bobLine := enrolInBrowser(t, bobCtx, base, mp, seen, "bob@example.com", "Bob's key", false)
	c.stop()
	c, base = keyCaddy(t, mp, storage, "webauthn", line, bobLine)
	browserStep(t, bobCtx, "ops' password in bob's browser", chromedp.Navigate(base+"/admin/"),
		chromedp.WaitVisible(chromedp.CSS("#email")),
		chromedp.SendKeys(chromedp.CSS("#email"), "ops@example.com"),
		chromedp.SendKeys(chromedp.CSS("#password"), testPassword+"\n"),
		chromedp.WaitVisible(chromedp.CSS("#bg-key-start")),
		chromedp.Click(chromedp.CSS("#bg-key-start")),
		waitText("did not answer in time, or the request was cancelled. Try again."))
	checkPage(t, bobCtx, "key-refused")
	if txt := bodyText(t, bobCtx); strings.Contains(txt, "Admin area") {
		t.Fatal("bob's key opened ops' account")
	}
}

// TestBrowserKeyBesideACode: an account that takes a key or a mailed code
// gets both on one page (the key's part, then a "Code" heading), where the
// key signs in; a browser without WebAuthn is told that it cannot use keys,
// its key button does nothing, and it signs in with the code.
func TestBrowserKeyBesideACode(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	storage := filepath.Join(t.TempDir(), "storage")
	seen := map[string]bool{}
	c, base := keyCaddy(t, mp, storage, "webauthn email", "", "")
	ctx := browser(t)
	virtualKey(t, ctx)
	line := enrolInBrowser(t, ctx, base, mp, seen, "ops@example.com", "Virtual key A", false)
	c.stop()
	c, base = keyCaddy(t, mp, storage, "webauthn email", line, "")

	browserStep(t, ctx, "password", chromedp.Navigate(base+"/admin/?break_glass=logout"),
		chromedp.WaitVisible(chromedp.CSS("#email")),
		chromedp.SendKeys(chromedp.CSS("#email"), "ops@example.com"),
		chromedp.SendKeys(chromedp.CSS("#password"), testPassword+"\n"),
		chromedp.WaitVisible(chromedp.CSS("#bg-key-start")), chromedp.WaitVisible(chromedp.CSS("#code")))
	mp.waitCode(t, seen)
	heads, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("h2")].map(h => h.innerText)`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(heads, "|") != "Security key or passkey|Code" {
		t.Errorf("the headings of the key and code page: %q", heads)
	}
	checkPage(t, ctx, "key-code")
	browserStep(t, ctx, "use the key", chromedp.Click(chromedp.CSS("#bg-key-start")), waitText("Admin area. Signed in as ops@example.com."))
	c.waitLog(t, "break-glass login succeeded", map[string]string{"second_factor": "webauthn", "key": "Virtual key A"})

	// A browser without WebAuthn: the script finds no PublicKeyCredential.
	plain := browser(t)
	if _, err := chromedp.Call(plain, page.AddScriptToEvaluateOnNewDocument,
		page.AddScriptToEvaluateOnNewDocumentParams{Source: "delete window.PublicKeyCredential"}); err != nil {
		t.Fatalf("Page.addScriptToEvaluateOnNewDocument: %v", err)
	}
	browserStep(t, plain, "password in a browser without WebAuthn", chromedp.Navigate(base+"/admin/"),
		chromedp.WaitVisible(chromedp.CSS("#email")),
		chromedp.SendKeys(chromedp.CSS("#email"), "ops@example.com"),
		chromedp.SendKeys(chromedp.CSS("#password"), testPassword+"\n"),
		chromedp.WaitVisible(chromedp.CSS("#code")), chromedp.WaitVisible(chromedp.CSS("#bg-key-status")))
	// The key's button stays hidden (and disabled): there is nothing to press.
	browserStep(t, plain, "the key's button hidden", chromedp.WaitNotVisible(chromedp.CSS("#bg-key-start")))
	const want = "This browser cannot use security keys or passkeys here. Use a code below."
	if msg, err := chromedp.Run(plain, chromedp.Text(chromedp.CSS("#bg-key-status"))); err != nil || msg != want {
		t.Errorf("the key's status says %q (%v), want %q", msg, err, want)
	}
	attrsAre(t, plain, "#bg-key-status", map[string]string{"role": "alert"})
	attrsAre(t, plain, "#bg-key-start", map[string]string{"disabled": ""})
	checkPage(t, plain, "key-unsupported")
	code, _ := mp.waitCode(t, seen)
	browserStep(t, plain, "the code", chromedp.SendKeys(chromedp.CSS("#code"), code+"\n"), waitText("Admin area. Signed in as ops@example.com."))
	c.waitLog(t, "break-glass login succeeded", map[string]string{"second_factor": "email"})
}

// TestBrowserKeyAnswersTheServerRefuses: answers a key gives that only the
// server can refuse come back on the key page with the attempts left: a
// signature the enrolled public key does not verify (another private key
// under the credential's ID), then a sign counter that went backwards (the
// credential as it was, its counter reset: a clone?).
func TestBrowserKeyAnswersTheServerRefuses(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	storage := filepath.Join(t.TempDir(), "storage")
	c, base := keyCaddy(t, mp, storage, "webauthn email", "", "")
	ctx := browser(t)
	id := virtualKey(t, ctx)
	line := enrolInBrowser(t, ctx, base, mp, map[string]bool{}, "ops@example.com", "Virtual key A", false)
	c.stop()
	c, base = keyCaddy(t, mp, storage, "webauthn", line, "")
	keySignInInBrowser(t, ctx, base, false) // the server now holds a sign count
	enrolled := *keyCredential(t, ctx, id)

	browserStep(t, ctx, "password", chromedp.Navigate(base+"/admin/?break_glass=logout"),
		chromedp.WaitVisible(chromedp.CSS("#email")),
		chromedp.SendKeys(chromedp.CSS("#email"), "ops@example.com"),
		chromedp.SendKeys(chromedp.CSS("#password"), testPassword+"\n"),
		chromedp.WaitVisible(chromedp.CSS("#bg-key-start")))
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	forged := enrolled
	if forged.PrivateKey, err = x509.MarshalPKCS8PrivateKey(other); err != nil {
		t.Fatal(err)
	}
	replaceCredential(t, ctx, id, forged)
	browserStep(t, ctx, "a signature of another private key", chromedp.Click(chromedp.CSS("#bg-key-start")),
		waitText("The security key's answer was not accepted. 4 attempts left before this address is locked out."))
	if l := c.waitLog(t, "break-glass security key refused", map[string]string{"email": "ops@example.com"}); !strings.Contains(fmt.Sprint(l["webauthn"]), "signature") {
		t.Errorf("refused for another reason than the signature: %v", l["webauthn"])
	}
	checkPage(t, ctx, "key-not-accepted")
	attrsAre(t, ctx, ".alert.error", map[string]string{"role": "alert"})

	cloned := enrolled
	cloned.SignCount = 0
	replaceCredential(t, ctx, id, cloned)
	browserStep(t, ctx, "a sign counter gone backwards", chromedp.Click(chromedp.CSS("#bg-key-start")),
		waitText("This security key is refused: its signature counter went backwards"),
		waitText("3 attempts left before this address is locked out."))
	c.waitLog(t, "break-glass security key refused: its sign counter did not increase (a clone?)", map[string]string{"email": "ops@example.com"})
	checkPage(t, ctx, "key-cloned")
	attrsAre(t, ctx, ".alert.error", map[string]string{"role": "alert"})
	if txt := bodyText(t, ctx); strings.Contains(txt, "Admin area") {
		t.Fatal("a refused key signed in")
	}
}
