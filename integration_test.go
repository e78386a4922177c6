// Integration tests: Caddy runs in this process with the handler configured
// by Caddyfile and by JSON; clients connect over real TCP from distinct
// loopback addresses; codes and alerts go to a real SMTP server and a real
// webhook receiver.

package breakglass

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

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
	hook    *webhookReceiver
	up      *upstreamServer
	logFile string
	hash    string
}

type webhookReceiver struct {
	*httptest.Server
	mu     sync.Mutex
	events []map[string]any
	got    chan struct{}
}

func startWebhook(t *testing.T) *webhookReceiver {
	w := &webhookReceiver{got: make(chan struct{}, 10)}
	w.Server = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		var ev map[string]any
		if err := json.NewDecoder(r.Body).Decode(&ev); err != nil || r.Method != http.MethodPost {
			t.Errorf("webhook: %s with a body that is not JSON: %v", r.Method, err)
		}
		w.mu.Lock()
		w.events = append(w.events, ev)
		w.mu.Unlock()
		w.got <- struct{}{}
	}))
	t.Cleanup(w.Close)
	return w
}

func (w *webhookReceiver) wait(t *testing.T) map[string]any {
	t.Helper()
	select {
	case <-w.got:
	case <-time.After(15 * time.Second):
		t.Fatal("the webhook got nothing")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.events[len(w.events)-1]
}

// waitEvent waits for an event named event and returns the first one.
func (w *webhookReceiver) waitEvent(t *testing.T, event string) map[string]any {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		w.mu.Lock()
		for _, ev := range w.events {
			if ev["event"] == event {
				w.mu.Unlock()
				return ev
			}
		}
		w.mu.Unlock()
		select {
		case <-w.got:
		case <-deadline:
			t.Fatalf("the webhook got no %s event", event)
		}
	}
}

// count returns how many events named event arrived.
func (w *webhookReceiver) count(event string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, ev := range w.events {
		if ev["event"] == event {
			n++
		}
	}
	return n
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
	w := &world{t: t, port: freePort(t), smtp: startSMTP(t, smtpOptions{}), hook: startWebhook(t), up: startUpstream(t),
		logFile: filepath.Join(t.TempDir(), "caddy.log"), hash: testHash(t, 5)}
	w.base = fmt.Sprintf("http://127.0.0.1:%d", w.port)
	// The hash comes from the environment, as the README advises: Caddy
	// itself logs the config at DEBUG, so a hash written inline would be in
	// the log.
	t.Setenv("BG_TEST_HASH", w.hash)
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
	w.waitUp()
}

func (w *world) waitUp() {
	w.t.Helper()
	for range 100 {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", w.port)); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	w.t.Fatal("Caddy did not start listening")
}

// logs returns the JSON log lines Caddy wrote so far.
func (w *world) logs() []map[string]any {
	f, err := os.Open(w.logFile)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

func (w *world) findLog(msg string, fields map[string]string) map[string]any {
	for _, l := range w.logs() {
		if l["msg"] != msg {
			continue
		}
		ok := true
		for k, v := range fields {
			if fmt.Sprint(l[k]) != v {
				ok = false
			}
		}
		if ok {
			return l
		}
	}
	return nil
}

// client is a browser-like client connecting from one loopback address.
type client struct {
	w  *world
	ip string
	hc *http.Client
}

func (w *world) client(ip string) *client {
	jar, _ := cookiejar.New(nil)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	return &client{w: w, ip: ip, hc: &http.Client{
		Jar:           jar,
		Transport:     &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       15 * time.Second,
	}}
}

type reply struct {
	status int
	header http.Header
	body   string
}

func (c *client) do(method, path string, form url.Values, hdr map[string]string) reply {
	c.w.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, c.w.base+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.w.t.Fatalf("%s %s from %s: %v", method, path, c.ip, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, string(b)}
}

func (c *client) get(path string) reply { return c.do("GET", path, nil, nil) }

func (p reply) csrf(t *testing.T) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(p.body)
	if m == nil {
		t.Fatalf("no form on the page (status %d):\n%s", p.status, p.body)
	}
	return m[1]
}

func (c *client) login(email, password string) reply {
	tok := c.get("/admin/").csrf(c.w.t)
	return c.do("POST", "/admin/", url.Values{"break_glass_step": {"login"}, "csrf_token": {tok}, "email": {email}, "password": {password}}, nil)
}

var codeRE = regexp.MustCompile(`\b(\d{6})\b`)

// signIn runs the whole flow and returns the code mail it read.
func (c *client) signIn() receivedMail {
	c.w.t.Helper()
	p, mail := c.signInWith(testPassword, "")
	if p.status != http.StatusSeeOther || p.header.Get("Location") != "/admin/" {
		c.w.t.Fatalf("right code: status %d, Location %q", p.status, p.header.Get("Location"))
	}
	return mail
}

// loginWith posts the login form with a reason.
func (c *client) loginWith(email, password, reason string) reply {
	tok := c.get("/admin/").csrf(c.w.t)
	return c.do("POST", "/admin/", url.Values{"break_glass_step": {"login"}, "csrf_token": {tok},
		"email": {email}, "password": {password}, "reason": {reason}}, nil)
}

// signInWith runs the flow with a password and a reason up to the code,
// and returns the answer to the code and the code mail.
func (c *client) signInWith(password, reason string) (reply, receivedMail) {
	t := c.w.t
	t.Helper()
	before := len(c.w.smtp.Mails())
	if p := c.loginWith("ops@example.com", password, reason); p.status != http.StatusSeeOther || p.header.Get("Location") != "/admin/" {
		t.Fatalf("right password from %s: status %d, Location %q\n%s", c.ip, p.status, p.header.Get("Location"), p.body)
	}
	codePage := c.get("/admin/")
	if codePage.status != http.StatusOK || !strings.Contains(codePage.body, `name="code"`) {
		t.Fatalf("no code page: %d\n%s", codePage.status, codePage.body)
	}
	mail := c.w.smtp.waitMail(t, before, "ops@example.com", "one-time code")
	code := codeRE.FindStringSubmatch(mail.Text)
	if code == nil {
		t.Fatalf("no code in the mail: %+v", mail)
	}
	return c.do("POST", "/admin/", url.Values{"break_glass_step": {"code"}, "csrf_token": {codePage.csrf(t)}, "code": {code[1]}}, nil), mail
}

func TestIntegrationFullFlow(t *testing.T) {
	for _, adapter := range []string{"caddyfile", "json"} {
		t.Run(adapter, func(t *testing.T) {
			w := newWorld(t)
			if adapter == "caddyfile" {
				w.load(w.caddyfile(3, ""), "caddyfile")
			} else {
				w.load(w.json(3), "json")
			}

			// Unguarded routes are untouched.
			if p := w.client("127.0.0.9").get("/"); p.status != 200 || p.body != "public page" {
				t.Fatalf("public page: %d %q", p.status, p.body)
			}
			// Outside the allow-list: 403, even claiming to be an allowed client.
			p := w.client("127.0.0.9").do("GET", "/admin/", nil, map[string]string{"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"})
			if p.status != http.StatusForbidden || strings.Contains(p.body, "<form") {
				t.Fatalf("not allowed: %d", p.status)
			}

			// Wrong passwords until locked out.
			attacker := w.client("127.0.0.3")
			if p := attacker.get("/admin/"); p.status != http.StatusUnauthorized || !strings.Contains(p.body, `name="password"`) {
				t.Fatalf("login page: %d", p.status)
			}
			for i, want := range []int{401, 401, 429} {
				if p := attacker.login("ops@example.com", "guess"); p.status != want {
					t.Fatalf("wrong password %d: %d, want %d", i+1, p.status, want)
				}
			}
			p = attacker.get("/admin/")
			if p.status != http.StatusTooManyRequests || p.header.Get("Retry-After") == "" {
				t.Fatalf("locked out: %d, Retry-After %q", p.status, p.header.Get("Retry-After"))
			}
			if w.findLog("break-glass client locked out", map[string]string{"client_ip": "127.0.0.3", "level": "warn"}) == nil {
				t.Error("no WARN for the lockout")
			}

			// Another client signs in with the code from the mail.
			op := w.client("127.0.0.2")
			mail := op.signIn()
			if !strings.Contains(mail.Subject, "127.0.0.2") || !strings.Contains(mail.Text, "127.0.0.2") {
				t.Errorf("the code mail does not say which client asked: %q", mail.Subject)
			}

			// The upstream is reached, with the placeholders.
			if p := op.get("/admin/reports"); p.status != 200 || p.body != "upstream /admin/reports" {
				t.Fatalf("upstream: %d %q", p.status, p.body)
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
			if ev := w.hook.waitEvent(t, "break_glass_lockout"); ev["ip"] != "127.0.0.3" || ev["severity"] != "warning" {
				t.Fatalf("lockout event: %v", ev)
			}
			ev := w.hook.waitEvent(t, "break_glass_login")
			if ev["event"] != "break_glass_login" || ev["ip"] != "127.0.0.2" || ev["severity"] != "critical" || ev["message"] == "" {
				t.Fatalf("webhook event: %v", ev)
			}
			if _, err := time.Parse(time.RFC3339, fmt.Sprint(ev["timestamp"])); err != nil {
				t.Fatalf("timestamp: %v", err)
			}
			alerts := map[string]int{}
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) && len(alerts) < 2 {
				alerts = map[string]int{}
				for _, m := range w.smtp.Mails() {
					if strings.Contains(m.Subject, "Emergency login used") {
						alerts[m.To[0]]++
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
			if alerts["sec@example.com"] != 1 || alerts["soc@example.com"] != 1 {
				t.Fatalf("alert mails: %v", alerts)
			}

			// The log says so, at WARN, with the client.
			if w.findLog("break-glass login succeeded", map[string]string{"client_ip": "127.0.0.2", "level": "warn"}) == nil {
				t.Fatal("no WARN \"break-glass login succeeded\" with client_ip 127.0.0.2")
			}

			// The locked client is still locked; the session is not its.
			if p := attacker.get("/admin/"); p.status != http.StatusTooManyRequests {
				t.Fatalf("the lockout ended: %d", p.status)
			}

			// Logout, then the login page again, and a replayed cookie fails.
			u, _ := url.Parse(w.base)
			saved := op.hc.Jar.Cookies(u)
			if p := op.get("/admin/?break_glass=logout"); p.status != 200 || !strings.Contains(p.body, "signed out") {
				t.Fatalf("logout: %d", p.status)
			}
			if p := op.get("/admin/"); p.status != http.StatusUnauthorized || !strings.Contains(p.body, `name="password"`) {
				t.Fatalf("after logout: %d", p.status)
			}
			op.hc.Jar.SetCookies(u, saved)
			if p := op.get("/admin/"); p.status != http.StatusUnauthorized {
				t.Fatalf("replayed cookie after logout: %d", p.status)
			}
			w.checkNoSecretsLogged(mail)
		})
	}
}

// checkNoSecretsLogged scans everything Caddy logged for the password, the
// hash, the code and cookie values.
func (w *world) checkNoSecretsLogged(codeMail receivedMail) {
	w.t.Helper()
	raw, err := os.ReadFile(w.logFile)
	if err != nil {
		w.t.Fatal(err)
	}
	log := string(raw)
	code := codeRE.FindString(codeMail.Text)
	for name, secret := range map[string]string{"password": testPassword, "hash": w.hash, "code": `"` + code + `"`, "session cookie": sessionCookie + "="} {
		if strings.Contains(log, secret) {
			w.t.Errorf("the log contains the %s", name)
			for _, l := range strings.Split(log, "\n") {
				if strings.Contains(l, secret) {
					w.t.Log(l[:min(len(l), 400)])
				}
			}
		}
	}
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
	c := w.client("127.0.0.4")
	c.login("ops@example.com", "wrong")
	c.login("ops@example.com", "wrong")
	tok := c.get("/other/").csrf(t)
	p := c.do("POST", "/other/", url.Values{"break_glass_step": {"login"}, "csrf_token": {tok}, "email": {"other@example.com"}, "password": {"wrong"}}, nil)
	if p.status != http.StatusTooManyRequests {
		t.Fatalf("third failure, on the other handler: %d, want 429", p.status)
	}
	if p := c.get("/admin/"); p.status != http.StatusTooManyRequests {
		t.Fatalf("first handler after the lockout on the second: %d, want 429", p.status)
	}
}

func TestIntegrationReloadKeepsLockoutsAndSessions(t *testing.T) {
	for _, adapter := range []string{"caddyfile", "json"} {
		t.Run(adapter, func(t *testing.T) {
			w := newWorld(t)
			cfg := func(max int) string {
				if adapter == "json" {
					return w.json(max)
				}
				return w.caddyfile(max, "")
			}
			w.load(cfg(2), adapter)
			locked := w.client("127.0.0.3")
			locked.login("ops@example.com", "wrong")
			if p := locked.login("ops@example.com", "wrong"); p.status != http.StatusTooManyRequests {
				t.Fatalf("not locked: %d", p.status)
			}
			op := w.client("127.0.0.2")
			op.signIn()

			w.load(cfg(4), adapter) // a changed config, as a reload or POST /load brings

			if p := locked.get("/admin/"); p.status != http.StatusTooManyRequests {
				t.Fatalf("the reload lifted the lockout: %d", p.status)
			}
			if p := op.get("/admin/after-reload"); p.status != 200 || p.body != "upstream /admin/after-reload" {
				t.Fatalf("the reload ended the session: %d %q", p.status, p.body)
			}
			// The new max_attempts applies: a fresh client gets 4 tries.
			fresh := w.client("127.0.0.4")
			for i, want := range []int{401, 401, 401, 429} {
				if p := fresh.login("ops@example.com", "wrong"); p.status != want {
					t.Fatalf("after reload, failure %d: %d, want %d", i+1, p.status, want)
				}
			}
		})
	}
}
