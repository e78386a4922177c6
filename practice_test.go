// The emergency-practice options against a running Caddy (in this process),
// with a real SMTP server and real webhook receivers: reason, alert_on,
// webhook formats and signing, TOTP, require_alert, the audit log and
// max_uses.

package breakglass

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"golang.org/x/crypto/bcrypt"
)

// practiceConfig is the world's Caddyfile with handler lines added to the
// break_glass block (and, with no alert emails, alert_emails dropped).
func (w *world) practiceConfig(maxAttempts int, handler string, alertEmails bool) string {
	cfg := w.caddyfile(maxAttempts, "")
	hook := "\t\talert_webhook " + w.hook.URL + "/hook\n"
	if !strings.Contains(cfg, hook) {
		w.t.Fatal("the base config changed")
	}
	cfg = strings.Replace(cfg, hook, hook+"\t\t"+strings.ReplaceAll(handler, "\n", "\n\t\t")+"\n", 1)
	if !alertEmails {
		cfg = strings.Replace(cfg, "\t\talert_emails sec@example.com soc@example.com\n", "", 1)
	}
	return cfg
}

func TestReasonGoesIntoTheLogAndEveryAlert(t *testing.T) {
	w := newWorld(t)
	w.load(w.practiceConfig(3, "require_reason\nalert_on login code_issued lockout", true), "caddyfile")
	c := w.client("127.0.0.2")
	if p := c.get("/admin/"); !strings.Contains(p.body, `name="reason"`) || !strings.Contains(p.body, `maxlength="200" value="" autocomplete="off" required`) {
		t.Fatalf("the login page has no required reason field:\n%s", p.body)
	}
	// Form mistakes cost nothing: no attempt is counted.
	if p := c.loginWith("ops@example.com", testPassword, "   "); p.status != http.StatusBadRequest || !strings.Contains(p.body, "Give the reason") {
		t.Fatalf("no reason: %d\n%s", p.status, p.body)
	}
	if p := c.loginWith("ops@example.com", testPassword, strings.Repeat("é", 201)); p.status != http.StatusBadRequest || !strings.Contains(p.body, "at most 200 characters") {
		t.Fatalf("a 201-character reason: %d", p.status)
	}
	// Shown back, escaped.
	p := c.loginWith("ops@example.com", "wrong", `INC-42 <b>SSO down</b>`)
	if p.status != http.StatusUnauthorized || !strings.Contains(p.body, `value="INC-42 &lt;b&gt;SSO down&lt;/b&gt;"`) || strings.Contains(p.body, "<b>SSO") {
		t.Fatalf("the reason is not shown back escaped: %d\n%s", p.status, p.body)
	}
	if !strings.Contains(p.body, "2 attempts left") {
		t.Fatalf("the form mistakes were counted as failures:\n%s", p.body)
	}

	reason := "INC-42: SSO down\r\nsince 09:00"
	if p, _ := c.signInWith(testPassword, reason); p.status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d\n%s", p.status, p.body)
	}
	clean := "INC-42: SSO down  since 09:00" // line breaks become spaces
	if l := w.findLog("break-glass login succeeded", map[string]string{"reason": clean, "level": "warn"}); l == nil {
		t.Fatal("the success log line does not carry the reason")
	}
	for _, event := range []string{"break_glass_code_issued", "break_glass_login"} {
		if ev := w.hook.waitEvent(t, event); ev["reason"] != clean || !strings.Contains(fmt.Sprint(ev["message"]), clean) {
			t.Fatalf("%s webhook: %v", event, ev)
		}
	}
	if ev := w.hook.waitEvent(t, "break_glass_code_issued"); ev["severity"] != "warning" || ev["ip"] != "127.0.0.2" {
		t.Fatalf("code_issued event: %v", ev)
	}
	for _, to := range []string{"sec@example.com", "soc@example.com"} {
		for _, subject := range []string{"a code is pending", "Emergency login used"} {
			if m := w.smtp.waitMail(t, 0, to, subject); !strings.Contains(m.Text, "Reason:     "+clean) {
				t.Fatalf("%q mail to %s lacks the reason:\n%s", subject, to, m.Text)
			}
		}
	}
}

func TestLockoutAlertsOncePerLockout(t *testing.T) {
	w := newWorld(t)
	w.load(w.caddyfile(3, ""), "caddyfile") // alert_on's default: login and lockout
	c := w.client("127.0.0.3")
	tok := c.get("/admin/").csrf(t)
	for range 20 { // after the third, refused before anything is checked
		c.do("POST", "/admin/", url.Values{"break_glass_step": {"login"}, "csrf_token": {tok}, "email": {"ops@example.com"}, "password": {"wrong"}}, nil)
	}
	ev := w.hook.waitEvent(t, "break_glass_lockout")
	if ev["ip"] != "127.0.0.3" || ev["severity"] != "warning" {
		t.Fatalf("lockout event: %v", ev)
	}
	w.smtp.waitMails(t, 2)
	time.Sleep(500 * time.Millisecond) // more would have arrived by now
	lockoutMails := 0
	for _, m := range w.smtp.Mails() {
		if strings.Contains(m.Subject, "locked out") {
			lockoutMails++
		}
	}
	if n := w.hook.count("break_glass_lockout"); n != 1 || lockoutMails != 2 {
		t.Fatalf("20 failures: %d lockout webhooks and %d lockout mails, want 1 and 2 (one per recipient)", n, lockoutMails)
	}
	// alert_on without lockout: no lockout alert.
	w2 := newWorld(t)
	w2.load(w2.practiceConfig(3, "alert_on login", true), "caddyfile")
	c2 := w2.client("127.0.0.4") // the state outlives the reload: 127.0.0.3 is still locked
	for range 3 {
		c2.login("ops@example.com", "wrong")
	}
	time.Sleep(300 * time.Millisecond)
	if n := w2.hook.count("break_glass_lockout"); n != 0 || len(w2.smtp.Mails()) != 0 {
		t.Fatalf("alert_on login: %d lockout webhooks, %d mails", n, len(w2.smtp.Mails()))
	}
}

// rawHook is a webhook receiver that keeps whole requests and answers with a
// status that can change.
type rawHook struct {
	*httptest.Server
	status atomic.Int32
	mu     sync.Mutex
	reqs   []hookRequest
}

func startRawHook(t *testing.T, status int) *rawHook {
	h := &rawHook{}
	h.status.Store(int32(status))
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		h.reqs = append(h.reqs, hookRequest{r.Header.Clone(), b})
		h.mu.Unlock()
		w.WriteHeader(int(h.status.Load()))
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *rawHook) requests() []hookRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]hookRequest(nil), h.reqs...)
}

func (h *rawHook) wait(t *testing.T, n int) []hookRequest {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if r := h.requests(); len(r) >= n {
			return r
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the webhook got %d requests, want %d", len(h.requests()), n)
	return nil
}

func TestSeveralWebhooksWithFormatsHeadersAndSignatures(t *testing.T) {
	w := newWorld(t)
	slack, discord := startRawHook(t, 200), startRawHook(t, 204)
	t.Setenv("BG_TEST_SLACK_SECRET", "slack-signing-secret")
	t.Setenv("BG_TEST_SLACK_TOKEN", "slack-token")
	w.load(w.practiceConfig(3, fmt.Sprintf(`alert_webhook %s/slack {
	format slack
	header Authorization "Bearer {env.BG_TEST_SLACK_TOKEN}"
	secret {env.BG_TEST_SLACK_SECRET}
}
alert_webhook %s/discord {
	format discord
	header X-Team ops
}`, slack.URL, discord.URL), false), "caddyfile")
	w.client("127.0.0.2").signIn()

	w.hook.waitEvent(t, "break_glass_login") // the generic one still gets its JSON
	s := slack.wait(t, 1)[0]
	ts := s.header.Get("X-Break-Glass-Timestamp")
	want := "sha256=" + fmt.Sprintf("%x", rfc2104HMACSHA256([]byte("slack-signing-secret"), append([]byte(ts+"."), s.body...)))
	if s.header.Get("X-Break-Glass-Signature") != want || s.header.Get("Authorization") != "Bearer slack-token" {
		t.Fatalf("slack request headers: %v (want signature %s)", s.header, want)
	}
	var sb map[string]string
	if err := json.Unmarshal(s.body, &sb); err != nil || !strings.Contains(sb["text"], "Break-glass login succeeded for ops@example.com from 127.0.0.2") {
		t.Fatalf("slack body: %s", s.body)
	}
	d := discord.wait(t, 1)[0]
	var db map[string]any
	if err := json.Unmarshal(d.body, &db); err != nil || !strings.Contains(fmt.Sprint(db["content"]), "127.0.0.2") || d.header.Get("X-Team") != "ops" || d.header.Get("X-Break-Glass-Signature") != "" {
		t.Fatalf("discord request: %v %s", d.header, d.body)
	}
	if raw, _ := os.ReadFile(w.logFile); bytes.Contains(raw, []byte("slack-token")) || bytes.Contains(raw, []byte("slack-signing-secret")) {
		t.Fatal("a webhook header value or secret is in the log")
	}
}

func TestTOTPSignsInWhenMailIsDownAndIsNeverReplayed(t *testing.T) {
	w := newWorld(t)
	secret, _ := newTOTPSecret()
	key, _ := decodeTOTPSecret(secret)
	t.Setenv("BG_TEST_TOTP", secret)
	w.load(w.practiceConfig(5, "totp_secret {env.BG_TEST_TOTP}", false), "caddyfile")
	w.smtp.Close() // mail is down

	step := totpStep(time.Now())
	code := hotp(key, uint64(step), 6)
	codeStep := func(c *client, code string) reply {
		if p := c.login("ops@example.com", testPassword); p.status != http.StatusSeeOther {
			t.Fatalf("password: %d", p.status)
		}
		page := c.get("/admin/")
		if !strings.Contains(page.body, "authenticator app") {
			t.Fatalf("the code page does not offer the authenticator:\n%s", page.body)
		}
		return c.do("POST", "/admin/", url.Values{"break_glass_step": {"code"}, "csrf_token": {page.csrf(t)}, "code": {code}}, nil)
	}
	a := w.client("127.0.0.2")
	if p := codeStep(a, code); p.status != http.StatusSeeOther {
		t.Fatalf("the current TOTP code: %d\n%s", p.status, p.body)
	}
	if p := a.get("/admin/x"); p.status != http.StatusOK {
		t.Fatalf("no session after the TOTP code: %d", p.status)
	}
	w.findLog("break-glass delivery failed", map[string]string{"channel": "code_email"})

	// The same code again, from another browser: refused, and counted.
	b := w.client("127.0.0.4")
	if p := codeStep(b, code); p.status != http.StatusUnauthorized || !strings.Contains(p.body, "Wrong code. 4 attempts left") {
		t.Fatalf("a replayed TOTP code: %d\n%s", p.status, p.body)
	}
	// The next step's code (inside the window) works once.
	next := hotp(key, uint64(step+1), 6)
	page := b.get("/admin/")
	if p := b.do("POST", "/admin/", url.Values{"break_glass_step": {"code"}, "csrf_token": {page.csrf(t)}, "code": {next}}, nil); p.status != http.StatusSeeOther {
		t.Fatalf("the next step's code: %d\n%s", p.status, p.body)
	}
	// Without a password first, a TOTP code alone is nothing.
	c := w.client("127.0.0.3")
	page = c.get("/admin/")
	if p := c.do("POST", "/admin/", url.Values{"break_glass_step": {"code"}, "csrf_token": {page.csrf(t)}, "code": {hotp(key, uint64(step-1), 6)}}, nil); p.status == http.StatusSeeOther {
		t.Fatal("a TOTP code signed in without the password")
	}
}

func TestRequireAlert(t *testing.T) {
	w := newWorld(t)
	a, b := startRawHook(t, 500), startRawHook(t, 500)
	cfg := w.practiceConfig(5, fmt.Sprintf("require_alert\nalert_webhook %s\nalert_webhook %s", a.URL, b.URL), false)
	cfg = strings.Replace(cfg, "\t\talert_webhook "+w.hook.URL+"/hook\n", "", 1)
	w.load(cfg, "caddyfile")

	// Every channel down: no session, a clear page, an ERROR.
	c := w.client("127.0.0.2")
	p, _ := c.signInWith(testPassword, "")
	if p.status != http.StatusServiceUnavailable || !strings.Contains(p.body, "nobody could be told") || p.header.Get("Set-Cookie") != "" && strings.Contains(p.header.Get("Set-Cookie"), sessionCookie+"=v") {
		t.Fatalf("every channel down: %d %v\n%s", p.status, p.header, p.body)
	}
	if r := c.get("/admin/x"); r.status == http.StatusOK {
		t.Fatal("a session was issued with every alert channel down")
	}
	if w.findLog("break-glass login refused: require_alert is set and no alert channel confirmed delivery", map[string]string{"level": "error"}) == nil {
		t.Fatal("no ERROR for the refused login")
	}
	if w.findLog("break-glass login succeeded", nil) != nil {
		t.Fatal("a refused login was logged as succeeded")
	}

	// One channel up: the session is issued.
	b.status.Store(200)
	if p, _ := c.signInWith(testPassword, ""); p.status != http.StatusSeeOther {
		t.Fatalf("one channel up: %d\n%s", p.status, p.body)
	}
	if r := c.get("/admin/x"); r.status != http.StatusOK {
		t.Fatalf("no session with one channel up: %d", r.status)
	}
}

func TestAuditLogRecordsTheFlowAndChains(t *testing.T) {
	w := newWorld(t)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	cfg := strings.Replace(w.practiceConfig(2, "audit_log "+path, false), "admin off", "admin "+admin, 1)
	w.load(cfg, "caddyfile")

	bad := w.client("127.0.0.3")
	bad.login("ops@example.com", "wrong")
	bad.login("ops@example.com", "wrong") // lockout
	adminCall(t, admin, "POST", "/break_glass/unlock", `{"client": "127.0.0.3"}`)
	op := w.client("127.0.0.2")
	op.signInWith(testPassword, "INC-9")
	op.get("/admin/reports?token=secret")
	op.get("/admin/?break_glass=logout")
	adminCall(t, admin, "POST", "/break_glass/revoke", `{}`)

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var events []string
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("audit line %q: %v", l, err)
		}
		lines = append(lines, m)
		events = append(events, fmt.Sprint(m["event"]))
	}
	if got := strings.Join(events, " "); got != "lockout admin_unlock code_issued login request logout admin_revoke" {
		t.Fatalf("audit events: %s\n%s", got, b)
	}
	if r := lines[4]; r["method"] != "GET" || r["path"] != "/admin/reports" || r["status"] != float64(200) || r["client"] != "127.0.0.2" {
		t.Fatalf("request line: %v", r)
	}
	if lines[3]["reason"] != "INC-9" || lines[0]["client"] != "127.0.0.3" {
		t.Fatalf("login and lockout lines: %v %v", lines[3], lines[0])
	}
	if bytes.Contains(b, []byte("secret")) {
		t.Fatal("the audit log holds a query string")
	}
	// The login alert carries the chain head: the hash of the login line.
	loginLine := strings.Split(string(b), "\n")[3]
	if ev := w.hook.waitEvent(t, "break_glass_login"); ev["audit_head"] != lineHash([]byte(loginLine)) {
		t.Fatalf("login alert audit_head %v, want the hash of the login line", ev["audit_head"])
	}

	if out, err := runCommand(t, verifyAuditCommand(), path); err != nil || !strings.Contains(out, "OK, 7 lines") {
		t.Fatalf("verify-audit: %v\n%s", err, out)
	}
	// One byte changed on line 4 (the login): verify-audit fails there.
	i := bytes.Index(b, []byte(loginLine))
	b[i+len(loginLine)/2] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := runCommand(t, verifyAuditCommand(), path); err == nil || !strings.Contains(err.Error(), "line 4:") {
		t.Fatalf("verify-audit after an edit: %v", err)
	}
}

func TestMaxUsesSpendsTheCredentialUntilTheHashChanges(t *testing.T) {
	for _, mode := range []string{"memory", "storage"} {
		t.Run(mode, func(t *testing.T) {
			w := newWorld(t)
			store := t.TempDir()
			cfg := func() string {
				c := strings.Replace(w.practiceConfig(5, "max_uses 1", false), "admin off", "admin off\n\tstorage file_system "+store, 1)
				return strings.Replace(c, "session_ttl 1h", "session_ttl 1h\n\t\tstate "+mode, 1)
			}
			w.load(cfg(), "caddyfile")
			c := w.client("127.0.0.2")
			if p, _ := c.signInWith(testPassword, ""); p.status != http.StatusSeeOther {
				t.Fatalf("first use: %d", p.status)
			}
			if r := c.get("/admin/x"); r.status != http.StatusOK {
				t.Fatalf("no session on the first use: %d", r.status)
			}
			if ev := w.hook.waitEvent(t, "break_glass_credential_spent"); ev["severity"] != "critical" {
				t.Fatalf("spent alert: %v", ev)
			}
			other := w.client("127.0.0.4")
			if p := other.get("/admin/"); p.status != http.StatusForbidden || !strings.Contains(p.body, "Credential spent") {
				t.Fatalf("login page after the last use: %d\n%s", p.status, p.body)
			}
			if p := other.do("POST", "/admin/", url.Values{"break_glass_step": {"login"}, "csrf_token": {"x"}, "email": {"ops@example.com"}, "password": {testPassword}}, nil); p.status == http.StatusSeeOther {
				t.Fatal("a spent credential took a password")
			}
			// Counted in the config's storage in both modes: a restart
			// (the state of memory mode is gone) keeps it spent.
			if keys, _ := (&certmagic.FileStorage{Path: store}).List(t.Context(), usesDir, false); len(keys) != 1 {
				t.Fatalf("uses in storage: %v", keys)
			}
			if err := caddy.Stop(); err != nil {
				t.Fatal(err)
			}
			w.load(cfg(), "caddyfile")
			if p := other.get("/admin/"); p.status != http.StatusForbidden {
				t.Fatalf("after a restart, the spent credential: %d", p.status)
			}

			// A new hash: a new credential, usable again.
			h, _ := bcrypt.GenerateFromPassword([]byte("a new password"), 4)
			t.Setenv("BG_TEST_HASH", string(h))
			w.load(cfg(), "caddyfile")
			if p := other.get("/admin/"); p.status != http.StatusUnauthorized || !strings.Contains(p.body, `name="password"`) {
				t.Fatalf("login page after the hash changed: %d", p.status)
			}
			if p, _ := other.signInWith("a new password", ""); p.status != http.StatusSeeOther {
				t.Fatalf("the new credential: %d\n%s", p.status, p.body)
			}
		})
	}
}

func TestALockoutFloodNeverCrowdsOutTheLoginAlert(t *testing.T) {
	clk := useTestClock(t)
	var mu sync.Mutex
	var events []map[string]any
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev map[string]any
		_ = json.NewDecoder(r.Body).Decode(&ev)
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
		time.Sleep(time.Second) // a slow receiver keeps deliveries in flight
	}))
	t.Cleanup(slow.Close)
	h := newTestHandler(t, &App{MaxAttempts: 1}, func(h *Handler) { h.AlertWebhook = slow.URL })
	count := func(event string) (n int, last map[string]any) {
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range events {
			if ev["event"] == event {
				n++
				last = ev
			}
		}
		return n, last
	}

	// 300 clients (each its own IPv6 /64) lock themselves out at once.
	for i := range 300 {
		b := newBrowser(fmt.Sprintf("[2001:db8:0:%x::1]", i))
		if resp := b.login(t, h, "ops@example.com", "wrong"); resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("client %d: %d, want locked out", i, resp.StatusCode)
		}
	}
	// The operator's login still gets its alert.
	if resp := newBrowser("192.0.2.10").signIn(t, h); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in during the flood: %d", resp.StatusCode)
	}
	deadline := time.Now().Add(10 * time.Second)
	for n, _ := count(eventLogin); n == 0; n, _ = count(eventLogin) {
		if time.Now().After(deadline) {
			t.Fatal("the login alert was crowded out by the lockout alerts")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := len(h.logs.FilterMessage("break-glass delivery dropped: too many deliveries in flight, or the app is stopping").All()); n != 0 {
		t.Fatalf("%d deliveries dropped", n)
	}
	time.Sleep(300 * time.Millisecond)
	if n, _ := count(eventLockout); n != lockoutAlertsPerWindow {
		t.Fatalf("%d lockout alerts for 300 lockouts in a minute, want %d", n, lockoutAlertsPerWindow)
	}
	if n := len(h.logs.FilterMessage("break-glass lockout alert held back: too many lockouts at once; the next lockout alert will count it").All()); n != 300-lockoutAlertsPerWindow {
		t.Fatalf("%d lockout alerts held back, want %d", n, 300-lockoutAlertsPerWindow)
	}
	// A minute later, the next lockout alert counts those held back.
	clk.Advance(lockoutAlertWindow)
	newBrowser("192.0.2.11").login(t, h, "ops@example.com", "wrong")
	deadline = time.Now().Add(10 * time.Second)
	for n, _ := count(eventLockout); n == lockoutAlertsPerWindow; n, _ = count(eventLockout) {
		if time.Now().After(deadline) {
			t.Fatal("no lockout alert in the next window")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, ev := count(eventLockout); !strings.Contains(fmt.Sprint(ev["message"]), "295 other lockouts were not alerted one by one") {
		t.Fatalf("the next lockout alert: %v", ev["message"])
	}
}
