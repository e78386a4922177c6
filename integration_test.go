// Integration tests: Caddy runs in this process with the handler configured
// by Caddyfile and by JSON; clients connect over real TCP from distinct
// loopback addresses; codes and alerts go to a real SMTP server and a real
// webhook receiver.

package breakglass

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// world is everything one integration test runs against.
type world struct {
	t       *testing.T
	port    int
	base    string
	smtp    *testSMTP
	hook    *bgtest.Webhook
	up      *upstreamServer
	logFile string
	hash    string
}

type upstreamServer struct {
	*httptest.Server
	mu   sync.Mutex
	last http.Header
}

func startUpstream(t *testing.T) *upstreamServer {
	u := &upstreamServer{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.last = r.Header.Clone()
		u.mu.Unlock()
		fmt.Fprintf(w, "upstream %s", r.URL.Path)
	}))
	t.Cleanup(u.Close)
	return u
}

// handedOut are the ports freePort gave in this process: never twice, since
// a Caddy stopping (its admin server shuts down in the background, its
// listeners use SO_REUSEPORT) may still answer on a port it had.
var handedOut sync.Map

func freePort(t *testing.T) int {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if _, used := handedOut.LoadOrStore(port, true); !used {
			return port
		}
	}
}

func newWorld(t *testing.T) *world {
	w := &world{t: t, port: freePort(t), smtp: startSMTP(t, smtpOptions{}), hook: bgtest.StartWebhook(t), up: startUpstream(t),
		logFile: filepath.Join(t.TempDir(), "caddy.log"), hash: testHash(t, 5)}
	w.base = fmt.Sprintf("http://127.0.0.1:%d", w.port)
	// The hash comes from the environment, as the README advises: Caddy
	// itself logs the config at DEBUG, so a hash written inline would be in
	// the log.
	t.Setenv("BG_TEST_HASH", w.hash)
	t.Cleanup(func() {
		for _, r := range w.hook.Requests() {
			if r.Method != http.MethodPost || r.JSON == nil {
				t.Errorf("webhook: %s with a body that is not JSON: %q", r.Method, r.Body)
			}
		}
	})
	return w
}

// caddyfile is the config of most tests, as an operator would write it.
func (w *world) caddyfile(maxAttempts int, extra string) string {
	return fmt.Sprintf(`{
	admin off
	log {
		output file %s
		format json
		level DEBUG
	}
	break_glass {
		max_attempts %d
		lockout 1h
		code_ttl 5m
		session_ttl 1h
		smtp %s {
			tls none
			from "Break Glass <bg@example.com>"
		}
	}
}
http://127.0.0.1:%d {
	bind 127.0.0.1
	break_glass /admin* {
		email ops@example.com
		hash {env.BG_TEST_HASH}
		allowed_ips 127.0.0.1 127.0.0.2 127.0.0.3 127.0.0.4
		alert_emails sec@example.com soc@example.com
		alert_webhook %s/hook
	}
	reverse_proxy /admin* %s {
		header_up X-Break-Glass-User {http.auth.user.id}
		header_up X-Break-Glass {http.auth.user.break_glass}
		header_up X-Break-Glass-Since {http.auth.user.authenticated_at}
	}
	%s
	@public not path /admin* /other*
	respond @public "public page"
}
`, w.logFile, maxAttempts, w.smtp.Addr, w.port, w.hook.URL, strings.TrimPrefix(w.up.URL, "http://"), extra)
}

// json is the same config written as JSON, the way it is POSTed to /load.
func (w *world) json(maxAttempts int) string {
	return fmt.Sprintf(`{
	"admin": {"disabled": true},
	"logging": {"logs": {"default": {"writer": {"output": "file", "filename": %q}, "encoder": {"format": "json"}, "level": "DEBUG"}}},
	"apps": {
		"break_glass": {
			"max_attempts": %d, "lockout": "1h", "code_ttl": "5m", "session_ttl": "1h",
			"smtp": {"address": %q, "tls": "none", "from": "Break Glass <bg@example.com>"}
		},
		"http": {"servers": {"main": {
			"listen": ["127.0.0.1:%d"],
			"automatic_https": {"disable": true},
			"routes": [
				{"match": [{"path": ["/admin*"]}], "handle": [
					{"handler": "break_glass", "email": "ops@example.com", "hash": "{env.BG_TEST_HASH}",
					 "allowed_ips": ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"],
					 "alert_emails": ["sec@example.com", "soc@example.com"],
					 "alert_webhook": "%s/hook"},
					{"handler": "reverse_proxy", "upstreams": [{"dial": %q}],
					 "headers": {"request": {"set": {
						"X-Break-Glass-User": ["{http.auth.user.id}"],
						"X-Break-Glass": ["{http.auth.user.break_glass}"],
						"X-Break-Glass-Since": ["{http.auth.user.authenticated_at}"]}}}}
				]},
				{"handle": [{"handler": "static_response", "body": "public page"}]}
			]
		}}}
	}
}`, w.logFile, maxAttempts, w.smtp.Addr, w.port, w.hook.URL, strings.TrimPrefix(w.up.URL, "http://"))
}

// load (re)loads Caddy with a Caddyfile or a JSON config.
func (w *world) load(config string, adapter string) {
	w.t.Helper()
	cfg := []byte(config)
	if adapter == "caddyfile" {
		var warn []caddyconfig.Warning
		var err error
		cfg, warn, err = caddyconfig.GetAdapter("caddyfile").Adapt(cfg, map[string]any{"filename": "Caddyfile"})
		if err != nil {
			w.t.Fatalf("adapting: %v", err)
		}
		for _, x := range warn {
			w.t.Logf("adapt warning: %s", x)
		}
	}
	if err := caddy.Load(cfg, true); err != nil {
		w.t.Fatalf("loading: %v", err)
	}
	w.t.Cleanup(func() { _ = caddy.Stop() })
	// Serving, not only listening: a listener of the config before may
	// still take a connection for a moment after a stop or a reload.
	hc := &http.Client{Transport: bgtest.OverTCP("127.0.0.1"), Timeout: time.Second}
	for range 100 {
		if resp, err := hc.Get(w.base + "/"); err == nil {
			resp.Body.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	w.t.Fatal("Caddy did not start serving")
}

// config is the world's config in the adapter's language.
func (w *world) config(adapter string, maxAttempts int) string {
	if adapter == "json" {
		return w.json(maxAttempts)
	}
	return w.caddyfile(maxAttempts, "")
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// log is what Caddy logged so far.
func (w *world) log() bgtest.Logs { return bgtest.ReadLogFile(w.logFile) }

var codeRE = regexp.MustCompile(`\b(\d{6})\b`)

// codeMail waits for the code mail after the first skip mails and returns
// it with its code.
func (w *world) codeMail(skip int) (receivedMail, string) {
	w.t.Helper()
	mail := w.smtp.waitMail(w.t, skip, "ops@example.com", "one-time code")
	code := codeRE.FindStringSubmatch(mail.Text)
	if code == nil {
		w.t.Fatalf("no code in the mail: %+v", mail)
	}
	return mail, code[1]
}

// signIn runs the whole flow from c with the code from the mail, and
// returns the code mail.
func (w *world) signIn(c *bgtest.Client) receivedMail {
	w.t.Helper()
	p, mail := w.signInWith(c, testPassword, "")
	if p.Status != http.StatusSeeOther || p.Header.Get("Location") != "/admin/" {
		w.t.Fatalf("right code: status %d, Location %q", p.Status, p.Header.Get("Location"))
	}
	return mail
}

// signInWith runs the flow from c with a password and a reason up to the
// code, and returns the answer to the code and the code mail.
func (w *world) signInWith(c *bgtest.Client, password, reason string) (bgtest.Reply, receivedMail) {
	t := w.t
	t.Helper()
	before := len(w.smtp.Mails())
	if p := c.Login("/admin/", "ops@example.com", password, reason, nil); p.Status != http.StatusSeeOther || p.Header.Get("Location") != "/admin/" {
		t.Fatalf("right password from %s: status %d, Location %q\n%s", c.Name, p.Status, p.Header.Get("Location"), p.Body)
	}
	codePage := c.Get("/admin/")
	if codePage.Status != http.StatusOK || !strings.Contains(codePage.Body, `name="code"`) {
		t.Fatalf("no code page: %d\n%s", codePage.Status, codePage.Body)
	}
	mail, code := w.codeMail(before)
	return c.Do("POST", "/admin/", bgtest.CodeForm(codePage.CSRF(t), code), nil), mail
}

func TestIntegrationFullFlow(t *testing.T) {
	for _, adapter := range []string{"caddyfile", "json"} {
		t.Run(adapter, func(t *testing.T) {
			w := newWorld(t)
			w.load(w.config(adapter, 3), adapter)

			// Unguarded routes are untouched.
			if p := w.kit("127.0.0.9").Get("/"); p.Status != 200 || p.Body != "public page" {
				t.Fatalf("public page: %d %q", p.Status, p.Body)
			}
			// Outside the allow-list: 403, even claiming to be an allowed client.
			p := w.kit("127.0.0.9").Do("GET", "/admin/", nil, map[string]string{"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"})
			if p.Status != http.StatusForbidden || strings.Contains(p.Body, "<form") {
				t.Fatalf("not allowed: %d", p.Status)
			}

			// Wrong passwords until locked out.
			attacker := w.kit("127.0.0.3")
			if p := attacker.Get("/admin/"); p.Status != http.StatusUnauthorized || !strings.Contains(p.Body, `name="password"`) {
				t.Fatalf("login page: %d", p.Status)
			}
			for i, want := range []int{401, 401, 429} {
				if p := attacker.Login("/admin/", "ops@example.com", "guess", "", nil); p.Status != want {
					t.Fatalf("wrong password %d: %d, want %d", i+1, p.Status, want)
				}
			}
			p = attacker.Get("/admin/")
			if p.Status != http.StatusTooManyRequests || p.Header.Get("Retry-After") == "" {
				t.Fatalf("locked out: %d, Retry-After %q", p.Status, p.Header.Get("Retry-After"))
			}
			bgtest.WaitLog(t, w.log, "break-glass client locked out", map[string]string{"client_ip": "127.0.0.3", "level": "warn"})

			// Another client signs in with the code from the mail.
			op := w.kit("127.0.0.2")
			mail := w.signIn(op)
			if !strings.Contains(mail.Subject, "127.0.0.2") || !strings.Contains(mail.Text, "127.0.0.2") {
				t.Errorf("the code mail does not say which client asked: %q", mail.Subject)
			}

			// The upstream is reached, with the placeholders.
			if p := op.Get("/admin/reports"); p.Status != 200 || p.Body != "upstream /admin/reports" {
				t.Fatalf("upstream: %d %q", p.Status, p.Body)
			}
			w.up.mu.Lock()
			hdr := w.up.last
			w.up.mu.Unlock()
			if hdr.Get("X-Break-Glass-User") != "ops@example.com" || hdr.Get("X-Break-Glass") != "true" {
				t.Fatalf("upstream headers: %v", hdr)
			}
			if _, err := time.Parse(time.RFC3339, hdr.Get("X-Break-Glass-Since")); err != nil {
				t.Fatalf("authenticated_at %q: %v", hdr.Get("X-Break-Glass-Since"), err)
			}

			// Alerts: the webhook and one mail per recipient; the lockout of
			// 127.0.0.3 above alerted too (alert_on's default).
			if ev := w.hook.WaitEvent(t, "break_glass_lockout").JSON; ev["ip"] != "127.0.0.3" || ev["severity"] != "warning" {
				t.Fatalf("lockout event: %v", ev)
			}
			ev := w.hook.WaitEvent(t, "break_glass_login").JSON
			if ev["event"] != "break_glass_login" || ev["ip"] != "127.0.0.2" || ev["severity"] != "critical" || ev["message"] == "" {
				t.Fatalf("webhook event: %v", ev)
			}
			if _, err := time.Parse(time.RFC3339, fmt.Sprint(ev["timestamp"])); err != nil {
				t.Fatalf("timestamp: %v", err)
			}
			w.smtp.waitMail(t, 0, "sec@example.com", "Emergency login used")
			w.smtp.waitMail(t, 0, "soc@example.com", "Emergency login used")
			alerts := map[string]int{}
			for _, m := range w.smtp.Mails() {
				if strings.Contains(m.Subject, "Emergency login used") {
					alerts[m.To[0]]++
				}
			}
			if alerts["sec@example.com"] != 1 || alerts["soc@example.com"] != 1 {
				t.Fatalf("alert mails: %v", alerts)
			}

			// The log says so, at WARN, with the client.
			bgtest.WaitLog(t, w.log, "break-glass login succeeded", map[string]string{"client_ip": "127.0.0.2", "level": "warn"})

			// The locked client is still locked; the session is not its.
			if p := attacker.Get("/admin/"); p.Status != http.StatusTooManyRequests {
				t.Fatalf("the lockout ended: %d", p.Status)
			}

			// Logout, then the login page again, and a replayed cookie fails.
			u := mustURL(w.base)
			saved := op.Jar().Cookies(u)
			if p := op.Get("/admin/?break_glass=logout"); p.Status != 200 || !strings.Contains(p.Body, "signed out") {
				t.Fatalf("logout: %d", p.Status)
			}
			if p := op.Get("/admin/"); p.Status != http.StatusUnauthorized || !strings.Contains(p.Body, `name="password"`) {
				t.Fatalf("after logout: %d", p.Status)
			}
			op.Jar().SetCookies(u, saved)
			if p := op.Get("/admin/"); p.Status != http.StatusUnauthorized {
				t.Fatalf("replayed cookie after logout: %d", p.Status)
			}
			w.wantNotLogged(map[string]string{"the password": testPassword, "the hash": w.hash,
				"the code": `"` + codeRE.FindString(mail.Text) + `"`, "the session cookie": sessionCookie + "="})
		})
	}
}

// wantNotLogged scans everything Caddy logged for each secret, named by
// its key, and returns the log.
func (w *world) wantNotLogged(secrets map[string]string) string {
	w.t.Helper()
	raw, err := os.ReadFile(w.logFile)
	if err != nil {
		w.t.Fatal(err)
	}
	for name, secret := range secrets {
		for _, l := range strings.Split(string(raw), "\n") {
			if strings.Contains(l, secret) {
				w.t.Errorf("the log contains %s: %s", name, l[:min(len(l), 400)])
			}
		}
	}
	return string(raw)
}

func TestIntegrationTwoHandlersShareTheLimiter(t *testing.T) {
	w := newWorld(t)
	second := `break_glass /other* {
		email other@example.com
		hash {env.BG_TEST_HASH}
		allowed_ips 127.0.0.0/8
		dev_log_code
	}
	respond /other* "other admin"`
	w.load(w.caddyfile(3, second), "caddyfile")
	c := w.kit("127.0.0.4")
	c.Login("/admin/", "ops@example.com", "wrong", "", nil)
	c.Login("/admin/", "ops@example.com", "wrong", "", nil)
	if p := c.Login("/other/", "other@example.com", "wrong", "", nil); p.Status != http.StatusTooManyRequests {
		t.Fatalf("third failure, on the other handler: %d, want 429", p.Status)
	}
	if p := c.Get("/admin/"); p.Status != http.StatusTooManyRequests {
		t.Fatalf("first handler after the lockout on the second: %d, want 429", p.Status)
	}
}

func TestIntegrationReloadKeepsLockoutsAndSessions(t *testing.T) {
	for _, adapter := range []string{"caddyfile", "json"} {
		t.Run(adapter, func(t *testing.T) {
			w := newWorld(t)
			w.load(w.config(adapter, 2), adapter)
			locked := w.kit("127.0.0.3")
			locked.Login("/admin/", "ops@example.com", "wrong", "", nil)
			if p := locked.Login("/admin/", "ops@example.com", "wrong", "", nil); p.Status != http.StatusTooManyRequests {
				t.Fatalf("not locked: %d", p.Status)
			}
			op := w.kit("127.0.0.2")
			w.signIn(op)

			w.load(w.config(adapter, 4), adapter) // a changed config, as a reload or POST /load brings

			if p := locked.Get("/admin/"); p.Status != http.StatusTooManyRequests {
				t.Fatalf("the reload lifted the lockout: %d", p.Status)
			}
			if p := op.Get("/admin/after-reload"); p.Status != 200 || p.Body != "upstream /admin/after-reload" {
				t.Fatalf("the reload ended the session: %d %q", p.Status, p.Body)
			}
			// The new max_attempts applies: a fresh client gets 4 tries.
			fresh := w.kit("127.0.0.4")
			for i, want := range []int{401, 401, 401, 429} {
				if p := fresh.Login("/admin/", "ops@example.com", "wrong", "", nil); p.Status != want {
					t.Fatalf("after reload, failure %d: %d, want %d", i+1, p.Status, want)
				}
			}
		})
	}
}
