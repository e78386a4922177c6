package breakglass

import (
	"encoding/json"
	"html"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"testing"

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

// keySignIn gives the password from c, answers the page's key challenge
// with k, and returns the answer to the key step and the body it posted.
func keySignIn(t *testing.T, c *bgtest.Client, k *softKey) (bgtest.Reply, []byte) {
	t.Helper()
	if r := c.Login("/admin/", "ops@example.com", testPassword, "INC-5", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("password: %d", r.Status)
	}
	page := c.Get("/admin/")
	var opts protocol.PublicKeyCredentialRequestOptions
	if err := json.Unmarshal(keyOptions(t, page.Body, "get"), &opts); err != nil {
		t.Fatal(err)
	}
	body := k.get(t, c.Base, &protocol.CredentialAssertion{Response: opts})
	return postKey(t, c, page, body), body
}

func postKey(t *testing.T, c *bgtest.Client, page bgtest.Reply, body []byte) bgtest.Reply {
	t.Helper()
	return c.Do("POST", "/admin/", url.Values{"break_glass_step": {"webauthn"}, "csrf_token": {page.CSRF(t)}, "credential": {string(body)}}, nil)
}

// TestAKeyEnrolledOnTheDoorSignsInOnceItIsInTheConfig: a signed-in operator
// enrols a key; the key signs in only once its printed line is in the
// account's config; the enrolment is alerted and audited, the login names
// the key; the same answer posted again is refused and counted.
func TestAKeyEnrolledOnTheDoorSignsInOnceItIsInTheConfig(t *testing.T) {
	app := testApp(t, &App{MaxAttempts: 5})
	hook := bgtest.StartWebhook(t)
	h := newTestHandler(t, app, func(h *Handler) { h.AlertWebhook = hook.URL })
	k := newSoftKey(t, "example.com")
	c := h.tlsClient(t, "192.0.2.5")
	cfg := enrolKey(t, h, c, k, `YubiKey "A", safe 1`)
	if cfg.Name != `YubiKey "A", safe 1` {
		t.Errorf("name %q", cfg.Name)
	}
	if ev := hook.WaitEvent(t, eventKeyEnrolled).JSON; ev["account"] != "ops@example.com" {
		t.Errorf("enrolment alert: %v", ev)
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
