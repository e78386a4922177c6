// Tests of the handler itself, driven through ServeHTTP without a server:
// costs, refusals, CSRF, pages, cookies and redirects.

package breakglass

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"
)

const testPassword = "correct horse battery staple"

var testHashes sync.Map

func testHash(t testing.TB, cost int) string {
	t.Helper()
	if v, ok := testHashes.Load(cost); ok {
		return v.(string)
	}
	b, err := bcrypt.GenerateFromPassword([]byte(testPassword), cost)
	if err != nil {
		t.Fatal(err)
	}
	testHashes.Store(cost, string(b))
	return string(b)
}

// comparisons records every bcrypt comparison the handler makes, and the
// most that ran at once. With hold set, each waits until hold is closed, so
// that attempts overlap as a parallel flood's would.
type comparisons struct {
	mu        sync.Mutex
	costs     []int
	now, peak int
	hold      chan struct{}
}

func (c *comparisons) compare(hash, pw []byte) error {
	cost, _ := bcrypt.Cost(hash)
	c.mu.Lock()
	c.costs = append(c.costs, cost)
	c.now++
	c.peak = max(c.peak, c.now)
	hold := c.hold
	c.mu.Unlock()
	defer func() { c.mu.Lock(); c.now--; c.mu.Unlock() }()
	if hold != nil {
		<-hold
	}
	return bcrypt.CompareHashAndPassword(hash, pw)
}

// calls is how many comparisons were made since the last take.
func (c *comparisons) calls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.costs)
}

func (c *comparisons) take() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.costs
	c.costs = nil
	return out
}

type testHandler struct {
	*Handler
	cmp  *comparisons
	logs *logBuffer
}

func newTestHandler(t testing.TB, app *App, mod func(*Handler)) testHandler {
	t.Helper()
	if app == nil {
		app = &App{MaxAttempts: 3}
	}
	if app.state == nil {
		if err := app.setup(zap.NewNop(), nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = app.Cleanup() })
	}
	cmp := &comparisons{}
	h := &Handler{Email: "ops@example.com", Hash: testHash(t, 5), DevLogCode: true, compare: cmp.compare,
		AllowedIPs: []string{"192.0.2.0/24", "2001:db8::/32"}}
	if mod != nil {
		mod(h)
	}
	log, logs := jsonLogger()
	if err := h.setup(app, log); err != nil {
		t.Fatal(err)
	}
	return testHandler{h, cmp, logs}
}

var upstream = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	id, _ := repl.GetString("http.auth.user.id")
	bg, _ := repl.GetString("http.auth.user.break_glass")
	at, _ := repl.GetString("http.auth.user.authenticated_at")
	w.Header().Set("X-Upstream", "reached")
	w.Header().Set("X-Upstream-Cookie", r.Header.Get("Cookie"))
	_, _ = io.WriteString(w, "upstream id="+id+" break_glass="+bg+" at="+at)
	return nil
})

// devCode reads the last code the handler logged (dev_log_code).
func devCode(t testing.TB, h testHandler) string {
	t.Helper()
	e := h.logs.Logs().All("break-glass code (dev_log_code)")
	if len(e) == 0 {
		t.Fatal("no code in the log")
	}
	return fmt.Sprint(e[len(e)-1]["code"])
}

// codeAt posts the right password from c and returns the code the handler
// logged for it; the test fails unless the password step answers 303.
func (h testHandler) codeAt(t testing.TB, c *bgtest.Client) string {
	t.Helper()
	if r := c.Login("/admin/", "ops@example.com", testPassword, "", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("right password from %s: status %d", c.Name, r.Status)
	}
	return devCode(t, h)
}

// waitUntil polls cond until it holds; the test fails after bgtest.WaitTimeout.
func waitUntil(t testing.TB, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(bgtest.WaitTimeout); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
	}
}

// override sets *v to x until the test ends.
func override[T any](t testing.TB, v *T, x T) {
	old := *v
	*v = x
	t.Cleanup(func() { *v = old })
}

// setCookies are the cookies r sets; setCookie is the one named name, or nil.
func setCookies(r bgtest.Reply) []*http.Cookie { return (&http.Response{Header: r.Header}).Cookies() }

func setCookie(r bgtest.Reply, name string) *http.Cookie {
	for _, c := range setCookies(r) {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// withCookiesOf gives c the cookies from holds for /admin/: one browser's
// cookies, sent from another address or to another handler.
func withCookiesOf(c, from *bgtest.Client) *bgtest.Client {
	u, _ := url.Parse(from.Base + "/admin/")
	c.Jar().SetCookies(u, from.Jar().Cookies(u))
	return c
}

func TestEveryLoginCostsExactlyOneComparisonAtTheConfiguredCost(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 100}, nil)
	c := h.client(t, "192.0.2.1")
	for name, creds := range map[string][2]string{
		"wrong email":        {"nobody@example.com", testPassword},
		"wrong password":     {"ops@example.com", "wrong"},
		"over-long password": {"ops@example.com", testPassword + strings.Repeat("x", 100)},
		"empty password":     {"ops@example.com", ""},
		"right":              {"OPS@example.com ", testPassword},
	} {
		c.Login("/admin/", creds[0], creds[1], "", nil)
		if got := h.cmp.take(); len(got) != 1 || got[0] != 5 {
			t.Errorf("%s: comparisons at costs %v, want exactly one at cost 5", name, got)
		}
	}
}

func TestWrongEmailAndWrongPasswordAnswerAlike(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 100}, nil)
	strip := regexp.MustCompile(`value="[^"]*"|\d+ attempts`)
	var pages []string
	for _, creds := range [][2]string{{"nobody@example.com", testPassword}, {"ops@example.com", "wrong"}} {
		r := h.client(t, "192.0.2.1").Login("/admin/", creds[0], creds[1], "", nil)
		if r.Status != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", r.Status)
		}
		pages = append(pages, strip.ReplaceAllString(r.Body, ""))
	}
	if pages[0] != pages[1] {
		t.Fatalf("the pages differ:\n%s\n----\n%s", pages[0], pages[1])
	}
}

func TestPasswordLongerThan72BytesIsWrongEvenIfItsStartIsRight(t *testing.T) {
	long := strings.Repeat("p", 72)
	hash, _ := bcrypt.GenerateFromPassword([]byte(long), bcrypt.MinCost)
	h := newTestHandler(t, nil, func(h *Handler) { h.Hash = string(hash) })
	c := h.client(t, "192.0.2.1")
	if r := c.Login("/admin/", "ops@example.com", long+"extra", "", nil); r.Status != http.StatusUnauthorized {
		t.Fatalf("73+ bytes whose first 72 are right: status %d, want 401", r.Status)
	}
	if r := c.Login("/admin/", "ops@example.com", long, "", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("the 72-byte password itself: status %d, want 303", r.Status)
	}
}

func TestClientOutsideTheAllowListIsRefusedWithoutHashing(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	c := h.client(t, "198.51.100.1")
	for _, method := range []string{"GET", "POST"} {
		r := c.Do(method, "/admin/", bgtest.LoginForm("", "ops@example.com", testPassword, ""), nil)
		if r.Status != http.StatusForbidden || strings.Contains(r.Body, "<form") || r.Header.Get("X-Upstream") != "" {
			t.Fatalf("%s: status %d, form shown: %v", method, r.Status, strings.Contains(r.Body, "<form"))
		}
	}
	if n := len(h.cmp.take()); n != 0 {
		t.Fatalf("%d comparisons for a refused client", n)
	}
}

func TestLockedOutClientIsRefusedWithoutHashingAndTheLockoutDoesNotGrow(t *testing.T) {
	clk := useTestClock(t)
	h := newTestHandler(t, &App{MaxAttempts: 3, Lockout: caddy.Duration(10 * time.Minute)}, nil)
	c := h.client(t, "192.0.2.1")
	for i := range 3 {
		r := c.Login("/admin/", "ops@example.com", "wrong", "", nil)
		if want := []int{401, 401, 429}[i]; r.Status != want {
			t.Fatalf("attempt %d: status %d, want %d", i+1, r.Status, want)
		}
	}
	h.cmp.take()
	clk.Advance(5 * time.Minute)
	r := c.Do("POST", "/admin/", bgtest.LoginForm("", "ops@example.com", testPassword, ""), nil)
	if r.Status != http.StatusTooManyRequests || r.Header.Get("Retry-After") != "300" {
		t.Fatalf("during lockout: status %d, Retry-After %q; want 429, 300", r.Status, r.Header.Get("Retry-After"))
	}
	if !strings.Contains(r.Body, formatTime(clk.Now().Add(5*time.Minute))) {
		t.Fatal("the locked page does not say until when")
	}
	if n := len(h.cmp.take()); n != 0 {
		t.Fatalf("%d comparisons for a locked-out client", n)
	}
	clk.Advance(5 * time.Minute)
	if r := c.Login("/admin/", "ops@example.com", testPassword, "", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("after the lockout: status %d, want 303 (the lockout grew)", r.Status)
	}
}

func TestPostWithoutOrWithAForeignCSRFTokenIsRefusedWithoutTouchingTheLimiter(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 1}, nil)
	victim, attacker := h.client(t, "192.0.2.1"), h.client(t, "192.0.2.1")
	foreign := attacker.Get("/admin/").CSRF(t)
	victim.Get("/admin/") // has its own flow cookie
	for name, tok := range map[string]string{"no token": "", "another browser's token": foreign, "garbage": "x"} {
		if r := victim.Do("POST", "/admin/", bgtest.LoginForm(tok, "ops@example.com", "wrong", ""), nil); r.Status != http.StatusForbidden {
			t.Fatalf("%s: status %d, want 403", name, r.Status)
		}
	}
	if n := len(h.cmp.take()); n != 0 {
		t.Fatalf("%d comparisons for forged forms", n)
	}
	if rem := h.state.limiter.remaining(limiterKey(netip.MustParseAddr("192.0.2.1")), lim(1, 0)); rem != 1 {
		t.Fatal("a forged form counted against the client")
	}
	if r := victim.Login("/admin/", "ops@example.com", testPassword, "", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("the real form after forged ones: status %d (max_attempts 1, so any counted failure locks)", r.Status)
	}
}

func TestOversizedFormIs413(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	r := h.client(t, "192.0.2.1").Do("POST", "/admin/", bgtest.LoginForm("", "", strings.Repeat("x", maxFormBytes), ""), nil)
	if r.Status != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413", r.Status)
	}
	if n := len(h.cmp.take()); n != 0 {
		t.Fatal("an oversized form was hashed")
	}
}

func TestPagesCarrySecurityHeadersAndNoScript(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	for name, ip := range map[string]string{"login": "192.0.2.1", "forbidden": "198.51.100.1"} {
		r := h.client(t, ip).Get("/admin/")
		for k, want := range map[string]string{
			"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
			"Content-Type": "text/html; charset=utf-8",
		} {
			if got := r.Header.Get(k); got != want {
				t.Errorf("%s: %s = %q, want %q", name, k, got, want)
			}
		}
		csp := r.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "frame-ancestors 'none'") || strings.Contains(csp, "unsafe") {
			t.Errorf("%s: CSP %q", name, csp)
		}
		if strings.Contains(r.Body, "<script") || strings.Contains(r.Body, "src=") || strings.Contains(r.Body, "href=\"http") {
			t.Errorf("%s: the page loads something or runs script", name)
		}
	}
}

func TestCodePageIsMadeForOneTimeCodes(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	c := h.client(t, "192.0.2.1")
	c.Login("/admin/", "ops@example.com", testPassword, "", nil)
	r := c.Get("/admin/")
	if r.Status != http.StatusOK || !strings.Contains(r.Body, `autocomplete="one-time-code"`) || !strings.Contains(r.Body, `inputmode="numeric"`) {
		t.Fatalf("code page (status %d):\n%s", r.Status, r.Body)
	}
}

func TestSessionCookieAttributesAndPassThrough(t *testing.T) {
	for _, overTLS := range []bool{false, true} {
		h := newTestHandler(t, &App{SessionTTL: caddy.Duration(30 * time.Minute)}, nil)
		c, name := h.client(t, "192.0.2.1"), sessionCookie
		if overTLS {
			c, name = h.tlsClient(t, "192.0.2.1"), hostPrefix+sessionCookie // this host only: no sibling subdomain can plant it
		}
		r := h.signInAt(t, c)
		if r.Status != http.StatusSeeOther || r.Header.Get("Location") != "/admin/" {
			t.Fatalf("right code: status %d, Location %q", r.Status, r.Header.Get("Location"))
		}
		if sc := setCookie(r, name); sc == nil || !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode || sc.MaxAge != 1800 || sc.Secure != overTLS || sc.Path != "/" {
			t.Fatalf("session cookie over TLS=%v: %+v", overTLS, sc)
		}
		// The upstream gets the site's own cookies, never ours.
		r = c.Do("GET", "/admin/x", nil, map[string]string{"Cookie": "app_session=keep-me"})
		if r.Header.Get("X-Upstream") != "reached" || !strings.Contains(r.Body, "id=ops@example.com break_glass=true at=20") {
			t.Fatalf("with a session: %s", r.Body)
		}
		if got := r.Header.Get("X-Upstream-Cookie"); strings.Contains(got, "break_glass_") || !strings.Contains(got, "app_session=keep-me") {
			t.Fatalf("the upstream got Cookie %q", got)
		}
	}
}

// Only the exact break_glass=logout parameter, alone or among others, ends
// the session; a replayed cookie does not bring it back.
func TestLogoutNeedsTheExactParameterAndEndsTheSessionEvenForAReplayedCookie(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	for _, logout := range []string{"?break_glass=logout", "?x=1&break_glass=logout"} {
		c := h.client(t, "192.0.2.1")
		saved := setCookie(h.signInAt(t, c), sessionCookie)
		if saved == nil {
			t.Fatal("no session cookie")
		}
		for _, q := range []string{"?next=xbreak_glass=logoutz", "?break_glass=logoutx", "?other=break_glass%3Dlogout"} {
			if r := c.Get("/admin/" + q); r.Header.Get("X-Upstream") != "reached" {
				t.Fatalf("%s ended the session", q)
			}
		}
		if r := c.Get("/admin/" + logout); r.Status != http.StatusOK || !strings.Contains(r.Body, "signed out") || !strings.Contains(r.Body, `name="password"`) {
			t.Fatalf("logout with %s: status %d\n%s", logout, r.Status, r.Body)
		}
		if r := c.Do("GET", "/admin/", nil, map[string]string{"Cookie": saved.Name + "=" + saved.Value}); r.Status != http.StatusUnauthorized || r.Header.Get("X-Upstream") != "" {
			t.Fatalf("replayed cookie after logout with %s: status %d", logout, r.Status)
		}
	}
}

func TestWrongCodesCountAndTheThirdVoidsTheCode(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 10}, nil)
	c := h.client(t, "192.0.2.1")
	code := h.codeAt(t, c)
	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	for i := range 3 {
		if r := c.SubmitCode("/admin/", wrong); r.Status != http.StatusUnauthorized {
			t.Fatalf("wrong code %d: status %d", i+1, r.Status)
		}
	}
	if rem := h.state.limiter.remaining(limiterKey(netip.MustParseAddr("192.0.2.1")), lim(10, 0)); rem != 7 {
		t.Fatalf("3 wrong codes left %d attempts of 10, want 7", rem)
	}
	if c.SubmitCode("/admin/", code).Status == http.StatusSeeOther {
		t.Fatal("the right code worked after 3 wrong ones")
	}
}

func TestCodeFromAnotherClientDoesNotWork(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	c := h.client(t, "192.0.2.1")
	code := h.codeAt(t, c)
	thief := withCookiesOf(h.client(t, "192.0.2.2"), c) // even with the operator's cookies
	if thief.SubmitCode("/admin/", code).Status == http.StatusSeeOther {
		t.Fatal("a code worked from another client")
	}
}

func TestSelfURLNeverLeavesTheSite(t *testing.T) {
	for target, want := range map[string]string{
		"/admin/x?a=1":                     "/admin/x?a=1",
		"//evil.example/admin":             "/evil.example/admin",
		"///evil.example":                  "/evil.example",
		"/%2F%2Fevil.example":              "/%2F%2Fevil.example",
		"/admin/?break_glass=logout&x=1":   "/admin/?x=1",
		"http://evil.example/admin?q=1":    "/admin?q=1",
		"/%5Cevil.example":                 "/%5Cevil.example",
		"/admin/%0d%0aSet-Cookie:%20x=1":   "/admin/%0d%0aSet-Cookie:%20x=1",
		"/admin/<script>":                  "/admin/%3Cscript%3E",
		"/admin/?return=https://evil.exam": "/admin/?return=https://evil.exam",
	} {
		got := selfURL(httptest.NewRequest("GET", target, nil)) // target parsed as a request line's, as a server does
		if got != want {
			t.Errorf("selfURL(%q) = %q, want %q", target, got, want)
		}
		if strings.HasPrefix(got, "//") || strings.HasPrefix(got, "/\\") || !strings.HasPrefix(got, "/") {
			t.Errorf("selfURL(%q) = %q leaves the site", target, got)
		}
	}
	// A backslash the server let through as it is.
	r := httptest.NewRequest("GET", "/", nil)
	r.URL = &url.URL{Path: "/\\evil.example"}
	if got := selfURL(r); strings.HasPrefix(got, "/\\") || strings.HasPrefix(got, "//") {
		t.Errorf("backslash path gives %q", got)
	}
}

// The failed page, and the login page after a failure, say how many
// attempts remain; a fresh client's login page says nothing of failures.
func TestLoginPagesSayHowManyAttemptsRemain(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 5}, nil)
	c := h.client(t, "192.0.2.1")
	if body := c.Get("/admin/").Body; strings.Contains(body, "attempts left") {
		t.Fatal("a fresh client is warned of failures")
	}
	c.Login("/admin/", "ops@example.com", "wrong", "", nil)
	if body := c.Get("/admin/").Body; !strings.Contains(body, "4 attempts left") {
		t.Fatalf("the login page after a failure does not say 4 attempts left:\n%s", body)
	}
	if r := c.Login("/admin/", "ops@example.com", "wrong", "", nil); !strings.Contains(r.Body, "3 attempts left") {
		t.Fatalf("page after 2 failures of 5 does not say 3 attempts left:\n%s", r.Body)
	}
}

func TestDeliveryFailuresNeverBlockTheLogin(t *testing.T) {
	override(t, &webhookTimeout, time.Minute)
	hook := bgtest.StartWebhook(t)
	hook.Hang()
	// An SMTP server that accepts connections and never says a word.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	go func() {
		for {
			c, err := mute.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()

	app := &App{}
	h := newTestHandler(t, app, func(h *Handler) {
		h.SMTP = &SMTPConfig{Address: mute.Addr().String(), TLS: "none", From: "bg@example.com", Timeout: caddy.Duration(time.Minute)}
		h.AlertEmails = &[]string{"sec@example.com"}
		h.AlertWebhook = hook.URL
	})
	c := h.client(t, "192.0.2.1")
	if r := h.signInAt(t, c); r.Status != http.StatusSeeOther { // the code comes from the dev log: the mail never leaves
		t.Fatalf("sign-in with every delivery hanging: status %d", r.Status)
	}
	if r := c.Get("/admin/"); r.Header.Get("X-Upstream") != "reached" {
		t.Fatal("no session while deliveries hang")
	}
	// The login finished while every delivery was still in flight (each has a
	// minute to go): nothing has been logged as delivered or failed yet.
	logs := h.logs.Logs()
	if n := len(logs.All("break-glass delivery failed")) + len(logs.All("break-glass delivery succeeded")); n != 0 {
		t.Fatalf("%d deliveries ended before the login did: it waited on them", n)
	}
	app.state.deliveries.close(0) // as Caddy stopping does: cancel and wait
	failed := map[string]bool{}
	for _, e := range h.logs.Logs().All("break-glass delivery failed") {
		if e["level"] != "error" {
			t.Errorf("delivery failure logged at %v", e["level"])
		}
		failed[fmt.Sprint(e["channel"])] = true
	}
	for _, ch := range []string{"code_email", "alert_email", "webhook"} {
		if !failed[ch] {
			t.Errorf("no ERROR for the %s channel; logs: %v", ch, h.logs.Logs())
		}
	}
}

func TestParallelWrongPasswordsCannotExceedMaxAttempts(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 3}, nil)
	h.cmp.hold = make(chan struct{})
	c := h.client(t, "192.0.2.1")
	form := bgtest.LoginForm(c.Get("/admin/").CSRF(t), "ops@example.com", "wrong", "")

	const n = 30
	statuses := make(chan int, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { statuses <- c.Do("POST", "/admin/", form, nil).Status })
	}
	// The refused ones answer without waiting for the held comparisons.
	refused := 0
	for refused < n-3 {
		if s := <-statuses; s != http.StatusTooManyRequests {
			t.Fatalf("an attempt beyond the 3 allowed got %d before any comparison ended", s)
		}
		refused++
	}
	close(h.cmp.hold)
	wg.Wait()
	close(statuses)
	if calls := h.cmp.calls(); calls != 3 {
		t.Fatalf("%d comparisons for %d parallel attempts with max_attempts 3", calls, n)
	}
	if _, locked, _ := h.state.limiter.lockedUntil(netip.MustParseAddr("192.0.2.1")); !locked {
		t.Fatal("the client is not locked after 3 failures")
	}
}

func TestSessionsAndCodesAreBoundToTheIssuingCredential(t *testing.T) {
	app := &App{}
	a := newTestHandler(t, app, nil)
	otherHash, _ := bcrypt.GenerateFromPassword([]byte("another password"), 5)
	b := newTestHandler(t, app, func(h *Handler) { h.Hash = string(otherHash) })

	// A session from a is no session on b (same email, another hash) —
	// which is also what changing the hash in the config does.
	onA := a.client(t, "192.0.2.1")
	a.signInAt(t, onA)
	if r := onA.Get("/admin/"); r.Header.Get("X-Upstream") != "reached" {
		t.Fatal("no session on the issuing handler")
	}
	if r := withCookiesOf(b.client(t, "192.0.2.1"), onA).Get("/admin/"); r.Header.Get("X-Upstream") != "" || r.Status != http.StatusUnauthorized {
		t.Fatalf("a's session opened b: %d", r.Status)
	}

	// A code issued by a does not sign in on b.
	onA = a.client(t, "192.0.2.2")
	code := a.codeAt(t, onA)
	if withCookiesOf(b.client(t, "192.0.2.2"), onA).SubmitCode("/admin/", code).Status == http.StatusSeeOther {
		t.Fatal("a's code signed in on b")
	}
}

func TestHashingBeyondTheCapGets503AndDoesNotCount(t *testing.T) {
	override(t, &hashWait, 50*time.Millisecond)
	h := newTestHandler(t, &App{MaxAttempts: 3, MaxConcurrentHashes: 1}, nil)
	h.cmp.hold = make(chan struct{})

	first := h.client(t, "192.0.2.1")
	done := make(chan int)
	form := bgtest.LoginForm(first.Get("/admin/").CSRF(t), "ops@example.com", "wrong", "")
	go func() { done <- first.Do("POST", "/admin/", form, nil).Status }()
	waitUntil(t, func() bool { return h.cmp.calls() == 1 }) // until the first attempt holds the only slot
	r := h.client(t, "192.0.2.2").Login("/admin/", "ops@example.com", "wrong", "", nil)
	if r.Status != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
		t.Fatalf("with the only hashing slot taken: %d, Retry-After %q; want 503 with Retry-After", r.Status, r.Header.Get("Retry-After"))
	}
	if rem := h.state.limiter.remaining(netip.MustParseAddr("192.0.2.2"), lim(3, 0)); rem != 3 {
		t.Fatalf("the refused attempt counted: %d attempts left of 3", rem)
	}
	close(h.cmp.hold)
	if s := <-done; s != http.StatusUnauthorized {
		t.Fatalf("the first attempt: %d", s)
	}
	if calls := h.cmp.calls(); calls != 1 {
		t.Fatalf("%d comparisons, want 1: the refused attempt was hashed", calls)
	}
}

func TestRequestsBeforeTheTLSHandshakeCompletesGet425(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	for _, method := range []string{"GET", "POST"} {
		r := httptest.NewRequest(method, "/admin/", strings.NewReader("break_glass_step=login"))
		r.RemoteAddr = "192.0.2.1:4000"
		r.TLS = &tls.ConnectionState{HandshakeComplete: false}
		w := httptest.NewRecorder()
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
		err := h.ServeHTTP(w, r, upstream)
		var he caddyhttp.HandlerError
		if !errors.As(err, &he) || he.StatusCode != http.StatusTooEarly {
			t.Fatalf("%s in 0-RTT early data: err %v, want a 425 error", method, err)
		}
		if len(h.cmp.take()) != 0 || w.Header().Get("X-Upstream") != "" {
			t.Fatalf("%s in early data was acted on", method)
		}
	}
}

func TestNoSessionIsIssuedWhenRevocationsAreFull(t *testing.T) {
	override(t, &maxRevoked, 1)
	h := newTestHandler(t, nil, nil)
	c := h.client(t, "192.0.2.1")
	h.signInAt(t, c)
	c.Get("/admin/?break_glass=logout") // one revocation: full
	if r := h.signInAt(t, c); r.Status != http.StatusServiceUnavailable {
		t.Fatalf("sign-in with the revocations full: %d, want 503", r.Status)
	}
}

func TestAFloodFromManyClientsNeverRunsMoreHashesThanTheCap(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 1000, MaxConcurrentHashes: 2}, nil)
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			c := h.client(t, fmt.Sprintf("192.0.2.%d", 10+i))
			for range 2 {
				c.Login("/admin/", "ops@example.com", "wrong", "", nil)
			}
		})
	}
	wg.Wait()
	if peak := h.cmp.peak; peak > 2 {
		t.Fatalf("%d comparisons ran at once with max_concurrent_hashes 2", peak)
	} else if peak < 2 {
		t.Fatalf("the flood never filled the 2 slots (peak %d): it proves nothing", peak)
	}
}

func TestASlowBodyHoldsNoHashingSlot(t *testing.T) {
	override(t, &hashWait, 200*time.Millisecond)
	h := newTestHandler(t, &App{MaxConcurrentHashes: 1}, nil)

	// A client that sends half a form and stalls.
	slow := h.client(t, "192.0.2.1")
	tok := slow.Get("/admin/").CSRF(t)
	pr, pw := io.Pipe()
	go func() { _, _ = io.WriteString(pw, "break_glass_step=login&csrf_token="+tok+"&email=ops") }()
	r := httptest.NewRequest("POST", "/admin/", pr)
	r.RemoteAddr = "192.0.2.1:40000"
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for _, c := range slow.Jar().Cookies(&url.URL{Scheme: "http", Host: "example.com", Path: "/admin/"}) {
		r.AddCookie(c)
	}
	stalled := make(chan struct{})
	go func() {
		w := httptest.NewRecorder()
		_ = h.ServeHTTP(w, caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil), upstream)
		close(stalled)
	}()
	time.Sleep(50 * time.Millisecond) // it is now inside the handler, reading

	// Another client's sign-in is hashed, not turned away as busy.
	if r := h.client(t, "192.0.2.2").Login("/admin/", "ops@example.com", "wrong", "", nil); r.Status != http.StatusUnauthorized {
		t.Fatalf("with a slow body in flight: %d, want 401 (hashed and wrong)", r.Status)
	}
	pw.Close()
	<-stalled
}

func TestAPanicWhileCheckingLeavesNoReservationBehind(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 1}, nil)
	h.compare = func(hash, pw []byte) error { panic("comparer failure") }
	c := h.client(t, "192.0.2.1")
	func() {
		defer func() { _ = recover() }()
		c.Login("/admin/", "ops@example.com", testPassword, "", nil)
	}()
	h.compare = bcrypt.CompareHashAndPassword
	if r := c.Login("/admin/", "ops@example.com", testPassword, "", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("after a panic in the comparer: %d (the only attempt is still reserved)", r.Status)
	}
}
