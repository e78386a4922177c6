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

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
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

// comparisons records every bcrypt comparison the handler makes.
type comparisons struct {
	mu    sync.Mutex
	costs []int
}

func (c *comparisons) compare(hash, pw []byte) error {
	cost, _ := bcrypt.Cost(hash)
	c.mu.Lock()
	c.costs = append(c.costs, cost)
	c.mu.Unlock()
	return bcrypt.CompareHashAndPassword(hash, pw)
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
	logs *observer.ObservedLogs
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
	log, logs := observedLogger()
	if err := h.setup(app, log); err != nil {
		t.Fatal(err)
	}
	return testHandler{h, cmp, logs}
}

// browser keeps cookies between requests of one client, as a browser does.
type browser struct {
	remote  string
	cookies map[string]*http.Cookie
	tls     bool
}

func newBrowser(ip string) *browser {
	return &browser{remote: ip + ":40000", cookies: map[string]*http.Cookie{}}
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

func (b *browser) do(t testing.TB, h testHandler, method, target string, form url.Values) *http.Response {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	r := httptest.NewRequest(method, target, body)
	r.RemoteAddr = b.remote
	if b.tls {
		r.TLS = &tls.ConnectionState{HandshakeComplete: true}
	}
	if form != nil {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for _, c := range b.cookies {
		r.AddCookie(c)
	}
	w := httptest.NewRecorder()
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
	if err := h.ServeHTTP(w, r, upstream); err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	resp := w.Result()
	for _, c := range resp.Cookies() {
		if c.MaxAge < 0 {
			delete(b.cookies, c.Name)
		} else {
			b.cookies[c.Name] = c
		}
	}
	return resp
}

var csrfRE = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

func csrfOf(t testing.TB, resp *http.Response) string {
	t.Helper()
	b, _ := io.ReadAll(resp.Body)
	m := csrfRE.FindSubmatch(b)
	if m == nil {
		t.Fatalf("no CSRF token in the page (status %d):\n%s", resp.StatusCode, b)
	}
	return string(m[1])
}

func bodyOf(resp *http.Response) string {
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func (b *browser) login(t testing.TB, h testHandler, email, password string) *http.Response {
	t.Helper()
	tok := csrfOf(t, b.do(t, h, "GET", "/admin/", nil))
	return b.do(t, h, "POST", "/admin/", url.Values{"break_glass_step": {"login"}, "csrf_token": {tok}, "email": {email}, "password": {password}})
}

// devCode reads the last code the handler logged (dev_log_code).
func devCode(t testing.TB, h testHandler) string {
	t.Helper()
	e := h.logs.FilterMessage("break-glass code (dev_log_code)").All()
	if len(e) == 0 {
		t.Fatal("no code in the log")
	}
	return e[len(e)-1].ContextMap()["code"].(string)
}

func (b *browser) signIn(t testing.TB, h testHandler) *http.Response {
	t.Helper()
	if resp := b.login(t, h, "ops@example.com", testPassword); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("right password: status %d", resp.StatusCode)
	}
	tok := csrfOf(t, b.do(t, h, "GET", "/admin/", nil))
	return b.do(t, h, "POST", "/admin/", url.Values{"break_glass_step": {"code"}, "csrf_token": {tok}, "code": {devCode(t, h)}})
}

func TestEveryLoginCostsExactlyOneComparisonAtTheConfiguredCost(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 100}, nil)
	b := newBrowser("192.0.2.1")
	for name, creds := range map[string][2]string{
		"wrong email":        {"nobody@example.com", testPassword},
		"wrong password":     {"ops@example.com", "wrong"},
		"over-long password": {"ops@example.com", testPassword + strings.Repeat("x", 100)},
		"empty password":     {"ops@example.com", ""},
		"right":              {"OPS@example.com ", testPassword},
	} {
		b.login(t, h, creds[0], creds[1])
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
		b := newBrowser("192.0.2.1")
		resp := b.login(t, h, creds[0], creds[1])
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", resp.StatusCode)
		}
		pages = append(pages, strip.ReplaceAllString(bodyOf(resp), ""))
	}
	if pages[0] != pages[1] {
		t.Fatalf("the pages differ:\n%s\n----\n%s", pages[0], pages[1])
	}
}

func TestPasswordLongerThan72BytesIsWrongEvenIfItsStartIsRight(t *testing.T) {
	long := strings.Repeat("p", 72)
	hash, _ := bcrypt.GenerateFromPassword([]byte(long), bcrypt.MinCost)
	h := newTestHandler(t, nil, func(h *Handler) { h.Hash = string(hash) })
	b := newBrowser("192.0.2.1")
	if resp := b.login(t, h, "ops@example.com", long+"extra"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("73+ bytes whose first 72 are right: status %d, want 401", resp.StatusCode)
	}
	if resp := b.login(t, h, "ops@example.com", long); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("the 72-byte password itself: status %d, want 303", resp.StatusCode)
	}
}

func TestClientOutsideTheAllowListIsRefusedWithoutHashing(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	b := newBrowser("198.51.100.1")
	for _, method := range []string{"GET", "POST"} {
		resp := b.do(t, h, method, "/admin/", url.Values{"break_glass_step": {"login"}, "email": {"ops@example.com"}, "password": {testPassword}})
		body := bodyOf(resp)
		if resp.StatusCode != http.StatusForbidden || strings.Contains(body, "<form") || resp.Header.Get("X-Upstream") != "" {
			t.Fatalf("%s: status %d, form shown: %v", method, resp.StatusCode, strings.Contains(body, "<form"))
		}
	}
	if n := len(h.cmp.take()); n != 0 {
		t.Fatalf("%d comparisons for a refused client", n)
	}
}

func TestLockedOutClientIsRefusedWithoutHashingAndTheLockoutDoesNotGrow(t *testing.T) {
	clk := useTestClock(t)
	h := newTestHandler(t, &App{MaxAttempts: 3, Lockout: caddy.Duration(10 * time.Minute)}, nil)
	b := newBrowser("192.0.2.1")
	for i := range 3 {
		resp := b.login(t, h, "ops@example.com", "wrong")
		if want := []int{401, 401, 429}[i]; resp.StatusCode != want {
			t.Fatalf("attempt %d: status %d, want %d", i+1, resp.StatusCode, want)
		}
	}
	h.cmp.take()
	clk.Advance(5 * time.Minute)
	resp := b.do(t, h, "POST", "/admin/", url.Values{"break_glass_step": {"login"}, "email": {"ops@example.com"}, "password": {testPassword}})
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "300" {
		t.Fatalf("during lockout: status %d, Retry-After %q; want 429, 300", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if !strings.Contains(bodyOf(resp), formatTime(clk.Now().Add(5*time.Minute))) {
		t.Fatal("the locked page does not say until when")
	}
	if n := len(h.cmp.take()); n != 0 {
		t.Fatalf("%d comparisons for a locked-out client", n)
	}
	clk.Advance(5 * time.Minute)
	if resp := b.login(t, h, "ops@example.com", testPassword); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("after the lockout: status %d, want 303 (the lockout grew)", resp.StatusCode)
	}
}

func TestFailedLoginPageSaysHowManyAttemptsRemain(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 5}, nil)
	b := newBrowser("192.0.2.1")
	b.login(t, h, "ops@example.com", "wrong")
	if body := bodyOf(b.login(t, h, "ops@example.com", "wrong")); !strings.Contains(body, "3 attempts left") {
		t.Fatalf("page after 2 failures of 5 does not say 3 attempts left:\n%s", body)
	}
}

func TestPostWithoutOrWithAForeignCSRFTokenIsRefusedWithoutTouchingTheLimiter(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 1}, nil)
	victim, attacker := newBrowser("192.0.2.1"), newBrowser("192.0.2.1")
	foreign := csrfOf(t, attacker.do(t, h, "GET", "/admin/", nil))
	victim.do(t, h, "GET", "/admin/", nil) // has its own flow cookie
	for name, tok := range map[string]string{"no token": "", "another browser's token": foreign, "garbage": "x"} {
		resp := victim.do(t, h, "POST", "/admin/", url.Values{"break_glass_step": {"login"}, "csrf_token": {tok}, "email": {"ops@example.com"}, "password": {"wrong"}})
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%s: status %d, want 403", name, resp.StatusCode)
		}
	}
	if n := len(h.cmp.take()); n != 0 {
		t.Fatalf("%d comparisons for forged forms", n)
	}
	if rem := h.state.limiter.remaining(limiterKey(netip.MustParseAddr("192.0.2.1")), lim(1, 0)); rem != 1 {
		t.Fatal("a forged form counted against the client")
	}
	if resp := victim.login(t, h, "ops@example.com", testPassword); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("the real form after forged ones: status %d (max_attempts 1, so any counted failure locks)", resp.StatusCode)
	}
}

func TestOversizedFormIs413(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	b := newBrowser("192.0.2.1")
	resp := b.do(t, h, "POST", "/admin/", url.Values{"break_glass_step": {"login"}, "password": {strings.Repeat("x", maxFormBytes)}})
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413", resp.StatusCode)
	}
	if n := len(h.cmp.take()); n != 0 {
		t.Fatal("an oversized form was hashed")
	}
}

func TestPagesCarrySecurityHeadersAndNoScript(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	for name, ip := range map[string]string{"login": "192.0.2.1", "forbidden": "198.51.100.1"} {
		resp := newBrowser(ip).do(t, h, "GET", "/admin/", nil)
		for k, want := range map[string]string{
			"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
			"Content-Type": "text/html; charset=utf-8",
		} {
			if got := resp.Header.Get(k); got != want {
				t.Errorf("%s: %s = %q, want %q", name, k, got, want)
			}
		}
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "frame-ancestors 'none'") || strings.Contains(csp, "unsafe") {
			t.Errorf("%s: CSP %q", name, csp)
		}
		body := bodyOf(resp)
		if strings.Contains(body, "<script") || strings.Contains(body, "src=") || strings.Contains(body, "href=\"http") {
			t.Errorf("%s: the page loads something or runs script", name)
		}
	}
}

func TestCodePageIsMadeForOneTimeCodes(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	b := newBrowser("192.0.2.1")
	b.login(t, h, "ops@example.com", testPassword)
	resp := b.do(t, h, "GET", "/admin/", nil)
	body := bodyOf(resp)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `autocomplete="one-time-code"`) || !strings.Contains(body, `inputmode="numeric"`) {
		t.Fatalf("code page (status %d):\n%s", resp.StatusCode, body)
	}
}

func TestSessionCookieAttributesAndPassThrough(t *testing.T) {
	for _, overTLS := range []bool{false, true} {
		h := newTestHandler(t, &App{SessionTTL: caddy.Duration(30 * time.Minute)}, nil)
		b := newBrowser("192.0.2.1")
		b.tls = overTLS
		resp := b.signIn(t, h)
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/admin/" {
			t.Fatalf("right code: status %d, Location %q", resp.StatusCode, resp.Header.Get("Location"))
		}
		name := sessionCookie
		if overTLS {
			name = hostPrefix + sessionCookie // this host only: no sibling subdomain can plant it
		}
		var c *http.Cookie
		for _, rc := range resp.Cookies() {
			if rc.Name == name {
				c = rc
			}
		}
		if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.MaxAge != 1800 || c.Secure != overTLS || c.Path != "/" {
			t.Fatalf("session cookie over TLS=%v: %+v", overTLS, c)
		}
		resp = b.do(t, h, "GET", "/admin/x", nil)
		body := bodyOf(resp)
		if resp.Header.Get("X-Upstream") != "reached" || !strings.Contains(body, "id=ops@example.com break_glass=true at=20") {
			t.Fatalf("with a session: %s", body)
		}
	}
}

func TestLogoutEndsTheSessionEvenForAReplayedCookie(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	b := newBrowser("192.0.2.1")
	b.signIn(t, h)
	saved := *b.cookies[sessionCookie]
	resp := b.do(t, h, "GET", "/admin/?break_glass=logout", nil)
	if body := bodyOf(resp); resp.StatusCode != http.StatusOK || !strings.Contains(body, "signed out") || !strings.Contains(body, `name="password"`) {
		t.Fatalf("logout: status %d\n%s", resp.StatusCode, body)
	}
	b.cookies[sessionCookie] = &saved
	if resp := b.do(t, h, "GET", "/admin/", nil); resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("X-Upstream") != "" {
		t.Fatalf("replayed cookie after logout: status %d", resp.StatusCode)
	}
}

func TestWrongCodesCountAndTheThirdVoidsTheCode(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 10}, nil)
	b := newBrowser("192.0.2.1")
	b.login(t, h, "ops@example.com", testPassword)
	code := devCode(t, h)
	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	for i := range 3 {
		tok := csrfOf(t, b.do(t, h, "GET", "/admin/", nil))
		resp := b.do(t, h, "POST", "/admin/", url.Values{"break_glass_step": {"code"}, "csrf_token": {tok}, "code": {wrong}})
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("wrong code %d: status %d", i+1, resp.StatusCode)
		}
	}
	if rem := h.state.limiter.remaining(limiterKey(netip.MustParseAddr("192.0.2.1")), lim(10, 0)); rem != 7 {
		t.Fatalf("3 wrong codes left %d attempts of 10, want 7", rem)
	}
	tok := csrfOf(t, b.do(t, h, "GET", "/admin/", nil))
	resp := b.do(t, h, "POST", "/admin/", url.Values{"break_glass_step": {"code"}, "csrf_token": {tok}, "code": {code}})
	if resp.StatusCode == http.StatusSeeOther {
		t.Fatal("the right code worked after 3 wrong ones")
	}
}

func TestCodeFromAnotherClientDoesNotWork(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	b := newBrowser("192.0.2.1")
	b.login(t, h, "ops@example.com", testPassword)
	thief := newBrowser("192.0.2.2")
	thief.cookies = b.cookies // even with the operator's cookies
	tok := csrfOf(t, thief.do(t, h, "GET", "/admin/", nil))
	resp := thief.do(t, h, "POST", "/admin/", url.Values{"break_glass_step": {"code"}, "csrf_token": {tok}, "code": {devCode(t, h)}})
	if resp.StatusCode == http.StatusSeeOther {
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
		r := httptest.NewRequest("GET", "http://site.example/", nil)
		u, err := url.ParseRequestURI(target)
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		r.URL = u
		got := selfURL(r)
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

func TestLoginPageWarnsOfEarlierFailures(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 5}, nil)
	b := newBrowser("192.0.2.1")
	if body := bodyOf(b.do(t, h, "GET", "/admin/", nil)); strings.Contains(body, "attempts left") {
		t.Fatal("a fresh client is warned of failures")
	}
	b.login(t, h, "ops@example.com", "wrong")
	if body := bodyOf(b.do(t, h, "GET", "/admin/", nil)); !strings.Contains(body, "4 attempts left") {
		t.Fatalf("the login page after a failure does not say 4 attempts left:\n%s", body)
	}
}

func TestDeliveryFailuresNeverBlockTheLogin(t *testing.T) {
	oldTimeout := webhookTimeout
	webhookTimeout = time.Minute
	t.Cleanup(func() { webhookTimeout = oldTimeout })
	silent := startSilentServer(t)
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
		h.AlertWebhook = silent.URL
	})
	b := newBrowser("192.0.2.1")
	resp := b.signIn(t, h) // the code comes from the dev log: the mail never leaves
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in with every delivery hanging: status %d", resp.StatusCode)
	}
	if r := b.do(t, h, "GET", "/admin/", nil); r.Header.Get("X-Upstream") != "reached" {
		t.Fatal("no session while deliveries hang")
	}
	// The login finished while every delivery was still in flight (each has a
	// minute to go): nothing has been logged as delivered or failed yet.
	if n := h.logs.FilterMessage("break-glass delivery failed").Len() + h.logs.FilterMessage("break-glass delivery succeeded").Len(); n != 0 {
		t.Fatalf("%d deliveries ended before the login did: it waited on them", n)
	}
	app.state.deliveries.close(0) // as Caddy stopping does: cancel and wait
	failed := map[string]bool{}
	for _, e := range h.logs.FilterMessage("break-glass delivery failed").All() {
		if e.Level != zap.ErrorLevel {
			t.Errorf("delivery failure logged at %v", e.Level)
		}
		failed[e.ContextMap()["channel"].(string)] = true
	}
	for _, ch := range []string{"code_email", "alert_email", "webhook"} {
		if !failed[ch] {
			t.Errorf("no ERROR for the %s channel; logs: %v", ch, h.logs.All())
		}
	}
}

// blockingCompare holds every comparison until released, so that attempts
// overlap as a parallel flood's would.
type blockingCompare struct {
	mu      sync.Mutex
	calls   int
	release chan struct{}
}

func (b *blockingCompare) compare(hash, pw []byte) error {
	b.mu.Lock()
	b.calls++
	b.mu.Unlock()
	<-b.release
	return bcrypt.CompareHashAndPassword(hash, pw)
}

func TestParallelWrongPasswordsCannotExceedMaxAttempts(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 3}, nil)
	bc := &blockingCompare{release: make(chan struct{})}
	h.compare = bc.compare
	b := newBrowser("192.0.2.1")
	tok := csrfOf(t, b.do(t, h, "GET", "/admin/", nil))
	form := url.Values{"break_glass_step": {"login"}, "csrf_token": {tok}, "email": {"ops@example.com"}, "password": {"wrong"}}

	const n = 30
	statuses := make(chan int, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses <- b.do(t, h, "POST", "/admin/", form).StatusCode
		}()
	}
	// The refused ones answer without waiting for the held comparisons.
	refused := 0
	for refused < n-3 {
		if s := <-statuses; s != http.StatusTooManyRequests {
			t.Fatalf("an attempt beyond the 3 allowed got %d before any comparison ended", s)
		}
		refused++
	}
	close(bc.release)
	wg.Wait()
	close(statuses)
	if bc.calls != 3 {
		t.Fatalf("%d comparisons for %d parallel attempts with max_attempts 3", bc.calls, n)
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
	br := newBrowser("192.0.2.1")
	br.signIn(t, a)
	if r := br.do(t, a, "GET", "/admin/", nil); r.Header.Get("X-Upstream") != "reached" {
		t.Fatal("no session on the issuing handler")
	}
	if r := br.do(t, b, "GET", "/admin/", nil); r.Header.Get("X-Upstream") != "" || r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a's session opened b: %d", r.StatusCode)
	}

	// A code issued by a does not sign in on b.
	br2 := newBrowser("192.0.2.2")
	if r := br2.login(t, a, "ops@example.com", testPassword); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("password on a: %d", r.StatusCode)
	}
	tok := csrfOf(t, br2.do(t, b, "GET", "/admin/", nil))
	r := br2.do(t, b, "POST", "/admin/", url.Values{"break_glass_step": {"code"}, "csrf_token": {tok}, "code": {devCode(t, a)}})
	if r.StatusCode == http.StatusSeeOther {
		t.Fatal("a's code signed in on b")
	}
}

func TestUpstreamNeverSeesTheSessionCookie(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	b := newBrowser("192.0.2.1")
	b.signIn(t, h)
	b.cookies["app_session"] = &http.Cookie{Name: "app_session", Value: "keep-me"}
	r := b.do(t, h, "GET", "/admin/", nil)
	if r.Header.Get("X-Upstream") != "reached" {
		t.Fatal("no session")
	}
	got := r.Header.Get("X-Upstream-Cookie")
	if strings.Contains(got, "break_glass_") || !strings.Contains(got, "app_session=keep-me") {
		t.Fatalf("the upstream got Cookie %q", got)
	}
}

func TestLogoutNeedsTheExactParameter(t *testing.T) {
	h := newTestHandler(t, nil, nil)
	b := newBrowser("192.0.2.1")
	b.signIn(t, h)
	for _, q := range []string{"?next=xbreak_glass=logoutz", "?break_glass=logoutx", "?other=break_glass%3Dlogout"} {
		if r := b.do(t, h, "GET", "/admin/"+q, nil); r.Header.Get("X-Upstream") != "reached" {
			t.Fatalf("%s ended the session", q)
		}
	}
	if r := b.do(t, h, "GET", "/admin/?x=1&break_glass=logout", nil); r.Header.Get("X-Upstream") != "" {
		t.Fatal("break_glass=logout did not end the session")
	}
}

func TestHashingBeyondTheCapGets503AndDoesNotCount(t *testing.T) {
	old := hashWait
	hashWait = 50 * time.Millisecond
	t.Cleanup(func() { hashWait = old })
	h := newTestHandler(t, &App{MaxAttempts: 3, MaxConcurrentHashes: 1}, nil)
	bc := &blockingCompare{release: make(chan struct{})}
	h.compare = bc.compare

	first := newBrowser("192.0.2.1")
	done := make(chan int)
	tok := csrfOf(t, first.do(t, h, "GET", "/admin/", nil))
	go func() {
		done <- first.do(t, h, "POST", "/admin/", url.Values{"break_glass_step": {"login"}, "csrf_token": {tok},
			"email": {"ops@example.com"}, "password": {"wrong"}}).StatusCode
	}()
	for { // wait until the first attempt holds the only slot
		bc.mu.Lock()
		n := bc.calls
		bc.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	second := newBrowser("192.0.2.2")
	resp := second.login(t, h, "ops@example.com", "wrong")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("with the only hashing slot taken: %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if rem := h.state.limiter.remaining(netip.MustParseAddr("192.0.2.2"), lim(3, 0)); rem != 3 {
		t.Fatalf("the refused attempt counted: %d attempts left of 3", rem)
	}
	close(bc.release)
	if s := <-done; s != http.StatusUnauthorized {
		t.Fatalf("the first attempt: %d", s)
	}
	if bc.calls != 1 {
		t.Fatalf("%d comparisons, want 1: the refused attempt was hashed", bc.calls)
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
	old := maxRevoked
	maxRevoked = 1
	t.Cleanup(func() { maxRevoked = old })
	h := newTestHandler(t, nil, nil)
	b := newBrowser("192.0.2.1")
	b.signIn(t, h)
	b.do(t, h, "GET", "/admin/?break_glass=logout", nil) // one revocation: full
	if r := b.signIn(t, h); r.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("sign-in with the revocations full: %d, want 503", r.StatusCode)
	}
}

// concurrency records how many comparisons run at once.
type concurrency struct {
	mu        sync.Mutex
	now, peak int
}

func (c *concurrency) compare(hash, pw []byte) error {
	c.mu.Lock()
	c.now++
	c.peak = max(c.peak, c.now)
	c.mu.Unlock()
	defer func() { c.mu.Lock(); c.now--; c.mu.Unlock() }()
	return bcrypt.CompareHashAndPassword(hash, pw)
}

func TestAFloodFromManyClientsNeverRunsMoreHashesThanTheCap(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 1000, MaxConcurrentHashes: 2}, nil)
	cc := &concurrency{}
	h.compare = cc.compare
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := newBrowser(fmt.Sprintf("192.0.2.%d", 10+i))
			for range 2 {
				b.login(t, h, "ops@example.com", "wrong")
			}
		}()
	}
	wg.Wait()
	if cc.peak > 2 {
		t.Fatalf("%d comparisons ran at once with max_concurrent_hashes 2", cc.peak)
	}
	if cc.peak < 2 {
		t.Fatalf("the flood never filled the 2 slots (peak %d): it proves nothing", cc.peak)
	}
}

func TestASlowBodyHoldsNoHashingSlot(t *testing.T) {
	old := hashWait
	hashWait = 200 * time.Millisecond
	t.Cleanup(func() { hashWait = old })
	h := newTestHandler(t, &App{MaxConcurrentHashes: 1}, nil)

	// A client that sends half a form and stalls.
	slow := newBrowser("192.0.2.1")
	tok := csrfOf(t, slow.do(t, h, "GET", "/admin/", nil))
	pr, pw := io.Pipe()
	go func() { _, _ = io.WriteString(pw, "break_glass_step=login&csrf_token="+tok+"&email=ops") }()
	r := httptest.NewRequest("POST", "/admin/", pr)
	r.RemoteAddr = slow.remote
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for _, c := range slow.cookies {
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
	if resp := newBrowser("192.0.2.2").login(t, h, "ops@example.com", "wrong"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("with a slow body in flight: %d, want 401 (hashed and wrong)", resp.StatusCode)
	}
	pw.Close()
	<-stalled
}

func TestAPanicWhileCheckingLeavesNoReservationBehind(t *testing.T) {
	h := newTestHandler(t, &App{MaxAttempts: 1}, nil)
	h.compare = func(hash, pw []byte) error { panic("comparer failure") }
	b := newBrowser("192.0.2.1")
	func() {
		defer func() { _ = recover() }()
		b.login(t, h, "ops@example.com", testPassword)
	}()
	h.compare = bcrypt.CompareHashAndPassword
	if r := b.login(t, h, "ops@example.com", testPassword); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("after a panic in the comparer: %d (the only attempt is still reserved)", r.StatusCode)
	}
}
