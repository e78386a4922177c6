// The attack suite of the second security review (SECURITY.md, "Second
// review"): each test failed before its fix. These drive the handler
// through ServeHTTP; the ones that need a running Caddy are in
// attack_test.go.

package breakglass

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"
)

// Finding 1: two handlers share the limiter, and a sign-in on one used to
// reset the client's whole counter.
func TestASignInWithAnotherCredentialForgivesNoFailure(t *testing.T) {
	app := &App{MaxAttempts: 5}
	guarded := newTestHandler(t, app, nil)
	ownHash, _ := bcrypt.GenerateFromPassword([]byte("the attacker's own password"), 5)
	own := newTestHandler(t, app, func(h *Handler) { h.Email, h.Hash = "b@example.com", string(ownHash) })

	c := guarded.client(t, "192.0.2.1")
	wrong := 0
	for round := 0; round < 4; round++ {
		for range 4 {
			r := c.Login("/admin/", "ops@example.com", "guess", "", nil)
			wrong++
			if r.Status == http.StatusTooManyRequests { // the locked page
				if wrong != 5 {
					t.Fatalf("locked out at wrong password %d, want the 5th", wrong)
				}
				return
			}
			if r.Status != http.StatusUnauthorized {
				t.Fatalf("wrong password: %d", r.Status)
			}
		}
		// A new browser on the same address, signing in with its own credential.
		r := own.client(t, "192.0.2.1").SignIn("/admin/", own.account.email, "the attacker's own password", func() string { return devCode(t, own) })
		if r.Status != http.StatusSeeOther && wrong < 5 {
			t.Fatalf("the sign-in on the other credential: %d", r.Status)
		}
	}
	t.Fatalf("%d wrong passwords from one client with max_attempts 5: a sign-in elsewhere forgave them", wrong)
}

// Finding 2: right passwords were never limited. A client now gets
// codesPerClient codes a window; the next right password is refused before
// any hashing.
func TestRightPasswordsAreBoundedPerClientBeforeHashing(t *testing.T) {
	useTestClock(t)
	h := newTestHandler(t, &App{MaxAttempts: 5}, nil)
	codes := 0
	for i := range 10 {
		r := h.client(t, "192.0.2.1").Login("/admin/", "ops@example.com", testPassword, "", nil)
		switch r.Status {
		case http.StatusSeeOther:
			codes++
		case http.StatusTooManyRequests:
			if r.Header.Get("Retry-After") == "" {
				t.Fatal("429 without Retry-After")
			}
		default:
			t.Fatalf("right password %d: %d", i+1, r.Status)
		}
	}
	if codes != defaultCodesPerClient {
		t.Fatalf("%d codes for 10 right passwords from one client, want %d", codes, defaultCodesPerClient)
	}
	if n := len(h.cmp.take()); n != defaultCodesPerClient {
		t.Fatalf("%d comparisons, want %d: refused right passwords were hashed", n, defaultCodesPerClient)
	}
	if n := len(h.logs.Logs().All("break-glass code (dev_log_code)")); n != defaultCodesPerClient {
		t.Fatalf("%d codes issued, want %d", n, defaultCodesPerClient)
	}
}

// Finding 2: each right password replaced the one pending code, so the
// operator's code stopped working and typing it counted as their failure.
func TestAnotherClientsSignInNeverVoidsAPendingCode(t *testing.T) {
	useTestClock(t)
	h := newTestHandler(t, &App{MaxAttempts: 5}, nil)
	operator := h.client(t, "192.0.2.1")
	code := h.codeAt(t, operator)
	for range 3 {
		if r := h.client(t, "192.0.2.66").Login("/admin/", "ops@example.com", testPassword, "", nil); r.Status != http.StatusSeeOther {
			t.Fatalf("attacker's password: %d", r.Status)
		}
	}
	if r := operator.SubmitCode("/admin/", code); r.Status != http.StatusSeeOther {
		t.Fatalf("the operator's code after another client's sign-ins: %d, want 303", r.Status)
	}
	if rem := h.state.limiter.remaining(limiterKey(netip.MustParseAddr("192.0.2.1")), h.app.lim); rem != 5 {
		t.Fatalf("the operator has %d attempts left, want 5", rem)
	}
}

// Finding 2: codes are bounded per credential too, and the bound never
// voids a code already pending.
func TestCodesPerCredentialAreBounded(t *testing.T) {
	useTestClock(t)
	h := newTestHandler(t, &App{MaxAttempts: 5}, func(h *Handler) { h.AllowedIPs = []string{"192.0.2.0/24"} })
	first := h.client(t, "192.0.2.1")
	code := h.codeAt(t, first)
	for i := 2; i <= defaultCodesPerCredential+3; i++ {
		r := h.client(t, "192.0.2."+strconv.Itoa(i)).Login("/admin/", "ops@example.com", testPassword, "", nil)
		want := http.StatusSeeOther
		if i > defaultCodesPerCredential {
			want = http.StatusTooManyRequests
		}
		if r.Status != want {
			t.Fatalf("code %d for the credential: %d, want %d", i, r.Status, want)
		}
	}
	if n, _ := h.state.codes.pendingFor(h.account.scope); n != defaultCodesPerCredential {
		t.Fatalf("%d codes pending, want %d", n, defaultCodesPerCredential)
	}
	if r := first.SubmitCode("/admin/", code); r.Status != http.StatusSeeOther {
		t.Fatalf("the first code after the bound was reached: %d", r.Status)
	}
}

// orderedCompare holds every comparison but the first free ones until
// released one at a time, and records the order of the passwords.
type orderedCompare struct {
	mu      sync.Mutex
	block   bool
	order   []string
	release chan struct{}
}

func (o *orderedCompare) compare(hash, pw []byte) error {
	o.mu.Lock()
	o.order = append(o.order, string(pw))
	block := o.block
	o.mu.Unlock()
	if block {
		<-o.release
	}
	return bcrypt.CompareHashAndPassword(hash, pw)
}

func (o *orderedCompare) calls() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.order...)
}

func (g *hashGate) waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.waiters)
}

// Finding 3: a flood filled the hashing slots first come, first served.
// A client with no failures now goes before clients that keep failing.
func TestAClientWithoutFailuresIsServedBeforeFailingClients(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 5, MaxConcurrentHashes: 1}, nil)
	oc := &orderedCompare{release: make(chan struct{})}
	h.compare = oc.compare
	flooder := h.client(t, "192.0.2.9")
	flooder.Login("/admin/", "ops@example.com", "flood-1", "", nil) // one failure: priority 1
	oc.mu.Lock()
	oc.block = true
	oc.mu.Unlock()

	var wg sync.WaitGroup
	post := func(c *bgtest.Client, pw string) {
		form := bgtest.LoginForm(c.Get("/admin/").CSRF(t), "ops@example.com", pw, "")
		wg.Go(func() { c.Do("POST", "/admin/", form, nil) })
	}
	post(h.client(t, "192.0.2.8"), "holder") // takes the only slot
	waitUntil(t, func() bool { return len(oc.calls()) == 2 })
	post(flooder, "flood-2") // queued first, with a failure
	waitUntil(t, func() bool { return h.app.hashes.waiting() == 1 })
	post(h.client(t, "192.0.2.1"), testPassword) // queued second, no failure
	waitUntil(t, func() bool { return h.app.hashes.waiting() == 2 })
	for range 3 {
		oc.release <- struct{}{}
	}
	wg.Wait()
	if got := oc.calls(); len(got) != 4 || got[2] != testPassword || got[3] != "flood-2" {
		t.Fatalf("comparisons in the order %q; want the operator's before the flooder's", got)
	}
}

// Finding 9: code-step posts cost no hashing but each made a limiter
// entry, so a flood of them filled the limiter and a fresh operator got
// 429. Without a pending code there is nothing to guess: nothing is kept.
func TestCodePostsWithoutAPendingCodeCannotFillTheLimiter(t *testing.T) {
	useTestClock(t)
	h := newTestHandler(t, &App{MaxAttempts: 5, MaxTrackedClients: 5}, func(h *Handler) { h.AllowedIPs = []string{"192.0.2.0/24"} })
	for i := 10; i < 60; i++ {
		if r := h.client(t, "192.0.2."+strconv.Itoa(i)).SubmitCode("/admin/", "123456"); r.Status != http.StatusUnauthorized {
			t.Fatalf("a code post with no code pending: %d, want 401", r.Status)
		}
	}
	if r := h.client(t, "192.0.2.1").Login("/admin/", "ops@example.com", testPassword, "", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("a fresh operator after a flood of code posts: %d, want 303", r.Status)
	}
}

// Finding 9: a revoke ended the sessions and left pending codes working.
func TestRevokeEndsPendingCodesToo(t *testing.T) {
	for _, mode := range []string{"memory", "storage"} {
		t.Run(mode, func(t *testing.T) {
			useTestClock(t)
			app := &App{MaxAttempts: 5}
			if mode == "storage" {
				app.State = "storage"
				if err := app.setup(zap.NewNop(), &certmagic.FileStorage{Path: t.TempDir()}); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = app.Cleanup() })
			}
			h := newTestHandler(t, app, nil)
			c := h.client(t, "192.0.2.1")
			code := h.codeAt(t, c)
			if _, err := h.state.endSessions(h.account.scope); err != nil { // what revoke does
				t.Fatal(err)
			}
			if r := c.SubmitCode("/admin/", code); r.Status == http.StatusSeeOther || setCookie(r, sessionCookie) != nil {
				t.Fatalf("a code pending before the revoke signed in: %d", r.Status)
			}
		})
	}
}

// Finding 4: the cookies had Path=/, so after a sign-in the session cookie
// went to every unguarded route of the site. cookie_path keeps them to the
// guarded path; over TLS with Path=/, they carry the __Host- prefix.
func TestCookiePathKeepsTheCookiesToTheGuardedPath(t *testing.T) {
	for _, overTLS := range []bool{false, true} {
		h := newTestHandler(t, nil, func(h *Handler) { h.CookiePath = "/admin" })
		c := h.client(t, "192.0.2.1")
		if overTLS {
			c = h.tlsClient(t, "192.0.2.1")
		}
		login := c.Login("/admin/", "ops@example.com", testPassword, "", nil)
		if login.Status != http.StatusSeeOther || len(setCookies(login)) == 0 {
			t.Fatal(login.Status)
		}
		for _, ck := range setCookies(login) {
			if ck.Path != "/admin" || ck.Name != flowCookie {
				t.Fatalf("TLS %v: flow cookie %+v, want %s with Path=/admin", overTLS, ck, flowCookie)
			}
		}
		if sess := setCookie(c.SubmitCode("/admin/", devCode(t, h)), sessionCookie); sess == nil || sess.Path != "/admin" || sess.Secure != overTLS {
			t.Fatalf("TLS %v: session cookie %+v, want Path=/admin", overTLS, sess)
		}
	}
	for _, bad := range []string{"admin", "/a;b", "/a b", "/a\"", "/a\n"} {
		h := &Handler{Email: "ops@example.com", Hash: testHash(t, 5), DevLogCode: true, CookiePath: bad}
		app := &App{}
		if err := app.setup(zap.NewNop(), nil); err != nil {
			t.Fatal(err)
		}
		err := h.setup(app, zap.NewNop())
		_ = app.Cleanup()
		if err == nil || !strings.Contains(err.Error(), "cookie_path") {
			t.Fatalf("cookie_path %q: %v, want an error naming cookie_path", bad, err)
		}
	}
}

// Finding 6: over TLS the alerts named the TLS server name (SNI), which a
// client may choose among the names of one certificate, not the site whose
// route it reached.
func TestAlertsNameTheRoutedHostNotTheSNI(t *testing.T) {
	for _, siteName := range []string{"", "Admin portal"} {
		h := newTestHandler(t, nil, func(h *Handler) { h.SiteName = siteName })
		r := httptest.NewRequest("GET", "https://admin.test/admin/", nil)
		r.TLS = &tls.ConnectionState{HandshakeComplete: true, ServerName: "www.test"}
		want := "admin.test"
		if siteName != "" {
			want = siteName
		}
		if got := h.site(r); got != want {
			t.Fatalf("site_name %q: alerts name %q, want %q", siteName, got, want)
		}
		r.Host = strings.Repeat("a", 2100) + ".test"
		if got := h.site(r); siteName == "" && len(got) != maxHostBytes {
			t.Fatalf("a 2,100-character Host: %d characters in alerts, want %d", len(got), maxHostBytes)
		}
	}
}

// Finding 9: bidirectional controls in the reason reached alerts and logs,
// so that an alert could read otherwise than it is.
func TestReasonLosesBidiControls(t *testing.T) {
	in := "INC-42 \u202eetadpu\u202c ok \u2066x\u2069\u200f\u061c"
	got := cleanReason(in)
	if strings.ContainsFunc(got, isBidiControl) || got != "INC-42 etadpu ok x" {
		t.Fatalf("cleanReason(%q) = %q", in, got)
	}
}
