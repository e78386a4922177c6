// The emergency-practice options against a running Caddy (in this process),
// with a real SMTP server and real webhook receivers: reason, alert_on,
// webhook formats and signing, TOTP, require_alert, the audit log and
// max_uses.

package breakglass

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
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
	c := w.kit("127.0.0.2")
	if p := c.Get("/admin/"); !strings.Contains(p.Body, `name="reason"`) || !strings.Contains(p.Body, `maxlength="200" value="" autocomplete="off" required`) {
		t.Fatalf("the login page has no required reason field:\n%s", p.Body)
	}
	// Form mistakes cost nothing: no attempt is counted.
	if p := c.Login("/admin/", "ops@example.com", testPassword, "   ", nil); p.Status != http.StatusBadRequest || !strings.Contains(p.Body, "Give the reason") {
		t.Fatalf("no reason: %d\n%s", p.Status, p.Body)
	}
	if p := c.Login("/admin/", "ops@example.com", testPassword, strings.Repeat("é", 201), nil); p.Status != http.StatusBadRequest || !strings.Contains(p.Body, "at most 200 characters") {
		t.Fatalf("a 201-character reason: %d", p.Status)
	}
	// Shown back, escaped.
	p := c.Login("/admin/", "ops@example.com", "wrong", `INC-42 <b>SSO down</b>`, nil)
	if p.Status != http.StatusUnauthorized || !strings.Contains(p.Body, `value="INC-42 &lt;b&gt;SSO down&lt;/b&gt;"`) || strings.Contains(p.Body, "<b>SSO") {
		t.Fatalf("the reason is not shown back escaped: %d\n%s", p.Status, p.Body)
	}
	if !strings.Contains(p.Body, "2 attempts left") {
		t.Fatalf("the form mistakes were counted as failures:\n%s", p.Body)
	}

	reason := "INC-42: SSO down\r\nsince 09:00"
	if p, _ := w.signInWith(c, testPassword, reason); p.Status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d\n%s", p.Status, p.Body)
	}
	clean := "INC-42: SSO down  since 09:00" // line breaks become spaces
	bgtest.WaitLog(t, w.log, "break-glass login succeeded", map[string]string{"reason": clean, "level": "warn"})
	for event, severity := range map[string]string{"break_glass_code_issued": "warning", "break_glass_login": "critical"} {
		if ev := w.hook.WaitEvent(t, event).JSON; ev["reason"] != clean || !strings.Contains(fmt.Sprint(ev["message"]), clean) || ev["severity"] != severity || ev["ip"] != "127.0.0.2" {
			t.Fatalf("%s webhook: %v", event, ev)
		}
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
	c := w.kit("127.0.0.3")
	tok := c.Get("/admin/").CSRF(t)
	for range 20 { // after the third, refused before anything is checked
		c.Do("POST", "/admin/", bgtest.LoginForm(tok, "ops@example.com", "wrong", ""), nil)
	}
	ev := w.hook.WaitEvent(t, "break_glass_lockout").JSON
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
	if n := w.hook.Count("break_glass_lockout"); n != 1 || lockoutMails != 2 {
		t.Fatalf("20 failures: %d lockout webhooks and %d lockout mails, want 1 and 2 (one per recipient)", n, lockoutMails)
	}
	// alert_on without lockout: no lockout alert.
	w2 := newWorld(t)
	w2.load(w2.practiceConfig(3, "alert_on login", true), "caddyfile")
	c2 := w2.kit("127.0.0.4") // the state outlives the reload: 127.0.0.3 is still locked
	for range 3 {
		c2.Login("/admin/", "ops@example.com", "wrong", "", nil)
	}
	time.Sleep(300 * time.Millisecond)
	if n := w2.hook.Count("break_glass_lockout"); n != 0 || len(w2.smtp.Mails()) != 0 {
		t.Fatalf("alert_on login: %d lockout webhooks, %d mails", n, len(w2.smtp.Mails()))
	}
}

func TestSeveralWebhooksWithFormatsHeadersAndSignatures(t *testing.T) {
	w := newWorld(t)
	slack, discord := bgtest.StartWebhook(t), bgtest.StartWebhook(t)
	slack.SetStatus(http.StatusOK)
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
	w.signIn(w.kit("127.0.0.2"))

	w.hook.WaitEvent(t, "break_glass_login") // the generic one still gets its JSON
	s := slack.Wait(t, 1)[0]
	ts := s.Header.Get("X-Break-Glass-Timestamp")
	want := "sha256=" + fmt.Sprintf("%x", rfc2104HMACSHA256([]byte("slack-signing-secret"), append([]byte(ts+"."), s.Body...)))
	if s.Header.Get("X-Break-Glass-Signature") != want || s.Header.Get("Authorization") != "Bearer slack-token" {
		t.Fatalf("slack request headers: %v (want signature %s)", s.Header, want)
	}
	var sb map[string]string
	if err := json.Unmarshal(s.Body, &sb); err != nil || !strings.Contains(sb["text"], "Break-glass login succeeded for ops@example.com from 127.0.0.2") {
		t.Fatalf("slack body: %s", s.Body)
	}
	d := discord.Wait(t, 1)[0]
	if !strings.Contains(fmt.Sprint(d.JSON["content"]), "127.0.0.2") || d.Header.Get("X-Team") != "ops" || d.Header.Get("X-Break-Glass-Signature") != "" {
		t.Fatalf("discord request: %v %s", d.Header, d.Body)
	}
	w.wantNotLogged(map[string]string{"a webhook header value": "slack-token", "a webhook secret": "slack-signing-secret"})
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
	codeStep := func(c *bgtest.Client, code string) bgtest.Reply {
		if p := c.Login("/admin/", "ops@example.com", testPassword, "", nil); p.Status != http.StatusSeeOther {
			t.Fatalf("password: %d", p.Status)
		}
		page := c.Get("/admin/")
		if !strings.Contains(page.Body, "authenticator app") {
			t.Fatalf("the code page does not offer the authenticator:\n%s", page.Body)
		}
		return c.Do("POST", "/admin/", bgtest.CodeForm(page.CSRF(t), code), nil)
	}
	a := w.kit("127.0.0.2")
	if p := codeStep(a, code); p.Status != http.StatusSeeOther {
		t.Fatalf("the current TOTP code: %d\n%s", p.Status, p.Body)
	}
	if p := a.Get("/admin/x"); p.Status != http.StatusOK {
		t.Fatalf("no session after the TOTP code: %d", p.Status)
	}
	bgtest.WaitLog(t, w.log, "break-glass delivery failed", map[string]string{"channel": "code_email"})

	// The same code again, from another browser: refused, and counted.
	b := w.kit("127.0.0.4")
	if p := codeStep(b, code); p.Status != http.StatusUnauthorized || !strings.Contains(p.Body, "Wrong code. 4 attempts left") {
		t.Fatalf("a replayed TOTP code: %d\n%s", p.Status, p.Body)
	}
	// The next step's code (inside the window) works once.
	if p := b.SubmitCode("/admin/", hotp(key, uint64(step+1), 6)); p.Status != http.StatusSeeOther {
		t.Fatalf("the next step's code: %d\n%s", p.Status, p.Body)
	}
	// Without a password first, a TOTP code alone is nothing.
	if p := w.kit("127.0.0.3").SubmitCode("/admin/", hotp(key, uint64(step-1), 6)); p.Status == http.StatusSeeOther {
		t.Fatal("a TOTP code signed in without the password")
	}
}

func TestRequireAlert(t *testing.T) {
	w := newWorld(t)
	a, b := bgtest.StartWebhook(t), bgtest.StartWebhook(t)
	a.SetStatus(http.StatusInternalServerError)
	b.SetStatus(http.StatusInternalServerError)
	cfg := w.practiceConfig(5, fmt.Sprintf("require_alert\nalert_webhook %s\nalert_webhook %s", a.URL, b.URL), false)
	cfg = strings.Replace(cfg, "\t\talert_webhook "+w.hook.URL+"/hook\n", "", 1)
	w.load(cfg, "caddyfile")

	// Every channel down: no session, a clear page, an ERROR.
	c := w.kit("127.0.0.2")
	p, _ := w.signInWith(c, testPassword, "")
	if p.Status != http.StatusServiceUnavailable || !strings.Contains(p.Body, "nobody could be told") || p.Header.Get("Set-Cookie") != "" && strings.Contains(p.Header.Get("Set-Cookie"), sessionCookie+"=v") {
		t.Fatalf("every channel down: %d %v\n%s", p.Status, p.Header, p.Body)
	}
	if r := c.Get("/admin/x"); r.Status == http.StatusOK {
		t.Fatal("a session was issued with every alert channel down")
	}
	bgtest.WaitLog(t, w.log, "break-glass login refused: require_alert is set and no alert channel confirmed delivery", map[string]string{"level": "error"})
	if w.log().Find("break-glass login succeeded", nil) != nil {
		t.Fatal("a refused login was logged as succeeded")
	}

	// One channel up: the session is issued.
	b.SetStatus(http.StatusOK)
	if p, _ := w.signInWith(c, testPassword, ""); p.Status != http.StatusSeeOther {
		t.Fatalf("one channel up: %d\n%s", p.Status, p.Body)
	}
	if r := c.Get("/admin/x"); r.Status != http.StatusOK {
		t.Fatalf("no session with one channel up: %d", r.Status)
	}
}

func TestAuditLogRecordsTheFlowAndChains(t *testing.T) {
	w := newWorld(t)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	cfg := strings.Replace(w.practiceConfig(2, "audit_log "+path, false), "admin off", "admin "+admin, 1)
	w.load(cfg, "caddyfile")

	bad := w.kit("127.0.0.3")
	bad.Login("/admin/", "ops@example.com", "wrong", "", nil)
	bad.Login("/admin/", "ops@example.com", "wrong", "", nil) // lockout
	adminCall(t, admin, "POST", "/break_glass/unlock", `{"client": "127.0.0.3"}`)
	op := w.kit("127.0.0.2")
	w.signInWith(op, testPassword, "INC-9")
	op.Get("/admin/reports?token=secret")
	op.Get("/admin/?break_glass=logout")
	adminCall(t, admin, "POST", "/break_glass/revoke", `{}`)

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bgtest.ReadLogs(bytes.NewReader(b)) // verify-audit below counts every line
	if got := auditEvents(b); got != "lockout admin_unlock code_issued login request logout admin_revoke" {
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
	if ev := w.hook.WaitEvent(t, "break_glass_login").JSON; ev["audit_head"] != lineHash([]byte(loginLine)) {
		t.Fatalf("login alert audit_head %v, want the hash of the login line", ev["audit_head"])
	}

	head := lineHash([]byte(strings.Split(string(b), "\n")[6])) // of the last line
	if out, err := runCommand(t, verifyAuditCommand(), path); err != nil || !strings.Contains(out, "OK, 7 lines, chain head "+head) {
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
			c := w.kit("127.0.0.2")
			if p, _ := w.signInWith(c, testPassword, ""); p.Status != http.StatusSeeOther {
				t.Fatalf("first use: %d", p.Status)
			}
			if r := c.Get("/admin/x"); r.Status != http.StatusOK {
				t.Fatalf("no session on the first use: %d", r.Status)
			}
			if ev := w.hook.WaitEvent(t, "break_glass_credential_spent").JSON; ev["severity"] != "critical" {
				t.Fatalf("spent alert: %v", ev)
			}
			other := w.kit("127.0.0.4")
			if p := other.Get("/admin/"); p.Status != http.StatusForbidden || !strings.Contains(p.Body, "Credential spent") {
				t.Fatalf("login page after the last use: %d\n%s", p.Status, p.Body)
			}
			if p := other.Do("POST", "/admin/", bgtest.LoginForm("x", "ops@example.com", testPassword, ""), nil); p.Status == http.StatusSeeOther {
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
			if p := other.Get("/admin/"); p.Status != http.StatusForbidden {
				t.Fatalf("after a restart, the spent credential: %d", p.Status)
			}

			// A new hash: a new credential, usable again.
			h, _ := bcrypt.GenerateFromPassword([]byte("a new password"), 4)
			t.Setenv("BG_TEST_HASH", string(h))
			w.load(cfg(), "caddyfile")
			if p := other.Get("/admin/"); p.Status != http.StatusUnauthorized || !strings.Contains(p.Body, `name="password"`) {
				t.Fatalf("login page after the hash changed: %d", p.Status)
			}
			if p, _ := w.signInWith(other, "a new password", ""); p.Status != http.StatusSeeOther {
				t.Fatalf("the new credential: %d\n%s", p.Status, p.Body)
			}
		})
	}
}

func TestALockoutFloodNeverCrowdsOutTheLoginAlert(t *testing.T) {
	clk := useTestClock(t)
	override(t, &deliveryGrace, 200*time.Millisecond) // the hanging deliveries are cancelled when the test ends
	hook := bgtest.StartWebhook(t)
	hook.Hang() // a receiver that never answers keeps every delivery in flight
	h := newTestHandler(t, &App{MaxAttempts: 1}, func(h *Handler) { h.AlertWebhook = hook.URL })

	// 300 clients (each its own IPv6 /64) lock themselves out at once.
	for i := range 300 {
		if r := h.client(t, fmt.Sprintf("2001:db8:0:%x::1", i)).Login("/admin/", "ops@example.com", "wrong", "", nil); r.Status != http.StatusTooManyRequests {
			t.Fatalf("client %d: %d, want locked out", i, r.Status)
		}
	}
	// The operator's login still gets its alert.
	if r := h.signInAt(t, h.client(t, "192.0.2.10")); r.Status != http.StatusSeeOther {
		t.Fatalf("sign-in during the flood: %d", r.Status)
	}
	hook.WaitEvent(t, eventLogin)
	if n := len(h.logs.Logs().All("break-glass delivery dropped: too many deliveries in flight, or the app is stopping")); n != 0 {
		t.Fatalf("%d deliveries dropped", n)
	}
	time.Sleep(300 * time.Millisecond)
	if n := hook.Count(eventLockout); n != lockoutAlertsPerWindow {
		t.Fatalf("%d lockout alerts for 300 lockouts in a minute, want %d", n, lockoutAlertsPerWindow)
	}
	if n := len(h.logs.Logs().All("break-glass lockout alert held back: too many lockouts at once; the next lockout alert will count it")); n != 300-lockoutAlertsPerWindow {
		t.Fatalf("%d lockout alerts held back, want %d", n, 300-lockoutAlertsPerWindow)
	}
	// A minute later, the next lockout alert counts those held back.
	clk.Advance(lockoutAlertWindow)
	h.client(t, "192.0.2.11").Login("/admin/", "ops@example.com", "wrong", "", nil)
	reqs := hook.Wait(t, lockoutAlertsPerWindow+2) // and the login's
	if ev := reqs[len(reqs)-1].JSON; ev["event"] != eventLockout || !strings.Contains(fmt.Sprint(ev["message"]), "295 other lockouts were not alerted one by one") {
		t.Fatalf("the next lockout alert: %v", ev)
	}
}
