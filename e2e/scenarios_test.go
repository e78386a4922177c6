//go:build e2e

// Scenarios 2–7: the Caddyfile and the CLI, JSON through the admin API,
// reloads, the allow-list behind proxies, delivery faults and alerts — all
// against the xcaddy-built binary.

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
)

// Scenario 2: `caddy adapt` and `caddy validate` on Caddyfiles.
func TestCaddyfileAdaptAndValidate(t *testing.T) {
	out := stdout(t, "adapt", "--config", "../example.Caddyfile")
	var cfg struct {
		Apps map[string]json.RawMessage
	}
	if err := json.Unmarshal([]byte(out), &cfg); err != nil {
		t.Fatalf("adapt output: %v\n%s", err, out)
	}
	if _, ok := cfg.Apps["break_glass"]; !ok {
		t.Error("the adapted example has no break_glass app")
	}
	if !strings.Contains(string(cfg.Apps["http"]), `"handler":"break_glass"`) {
		t.Error("the adapted example has no break_glass handler")
	}
	if out, err := run("validate", "--config", "../example.Caddyfile"); err != nil {
		t.Fatalf("caddy validate example.Caddyfile: %v\n%s", err, out)
	}

	t.Setenv("BG_HASH", "$2a$10$abcdefghijklmnopqrstuu5yN1bYB0sGMZ0dbdt3N7Nqn9hfxQUae") // shaped like bcrypt, never used
	hash := hash(t)
	for _, tc := range []struct {
		name, global, handler, want string
	}{
		{"missing email", "", "hash " + hash + "\ndev_log_code", "email: required"},
		{"missing hash", "", "email ops@example.com\ndev_log_code", "hash: required"},
		{"hash neither bcrypt nor argon2id", "", "email ops@example.com\nhash plaintext-password\ndev_log_code", "hash: not a bcrypt or argon2id hash"},
		{"bad IP", "", "email ops@example.com\nhash " + hash + "\ndev_log_code\nallowed_ips 10.0.0.0/33", `allowed_ips: "10.0.0.0/33"`},
		{"bad webhook", "", "email ops@example.com\nhash " + hash + "\ndev_log_code\nalert_webhook ftp://hooks.example.com", "alert_webhook"},
		{"bad alert address", "", "email ops@example.com\nhash " + hash + "\nsmtp 127.0.0.1:25 {\nfrom bg@example.com\n}\nalert_emails not-an-address", "alert_emails"},
		{"bad from", "", "email ops@example.com\nhash " + hash + "\nsmtp 127.0.0.1:25 {\nfrom not-an-address\n}", "smtp: from"},
		{"max_attempts 0", "break_glass {\nmax_attempts 0\n}", "email ops@example.com\nhash " + hash + "\ndev_log_code", "max_attempts"},
		{"zero duration", "break_glass {\nlockout 0s\n}", "email ops@example.com\nhash " + hash + "\ndev_log_code", "lockout"},
		{"negative duration", "break_glass {\ncode_ttl -5m\n}", "email ops@example.com\nhash " + hash + "\ndev_log_code", "code_ttl"},
		{"no way to deliver the code", "", "email ops@example.com\nhash " + hash, "no way to deliver the code"},
		{"unknown subdirective", "", "email ops@example.com\nhash " + hash + "\ndev_log_code\npasword hunter2", `unknown subdirective "pasword"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := fmt.Sprintf("{\nadmin off\n%s\n}\n:8080 {\nbreak_glass /admin* {\n%s\n}\nrespond ok\n}\n", tc.global, tc.handler)
			path := filepath.Join(t.TempDir(), "Caddyfile")
			if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := run("validate", "--config", path, "--adapter", "caddyfile")
			out = strings.ReplaceAll(out, `\"`, `"`) // Caddy logs the error as JSON
			if err == nil {
				t.Fatalf("caddy validate accepted it:\n%s", out)
			}
			if !strings.Contains(out, tc.want) {
				t.Fatalf("the error does not say %q:\n%s", tc.want, out)
			}
			if tc.name == "unknown subdirective" && !strings.Contains(out, "Caddyfile:10") {
				t.Fatalf("the error does not give the line (Caddyfile:10):\n%s", out)
			}
			if strings.Contains(out, "plaintext-password") {
				t.Fatal("the error shows the hash value")
			}
		})
	}
}

// Scenario 3: JSON through the admin API, then a changed max_attempts.
func TestJSONThroughTheAdminAPI(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	c := startCaddy(t, `{"admin": {"listen": "{ADMIN}"}}`, "json")
	s := defaultSite(mp)
	s.maxAttempts = 5
	c.load(t, s.json())

	seen := map[string]bool{}
	op := newClient(t, c.base, "127.0.0.2")
	signIn(t, op, mp, seen)
	if r := op.Get("/admin/"); r.Status != 200 || !strings.Contains(r.Body, "Signed in as ops@example.com") {
		t.Fatalf("with a session: %d %q", r.Status, r.Body)
	}

	// 5 attempts: the 4th failure still answers 401.
	a := newClient(t, c.base, "127.0.0.3")
	for i := range 4 {
		if r := a.Login("/admin/", "ops@example.com", "wrong", "", nil); r.Status != 401 {
			t.Fatalf("failure %d with max_attempts 5: %d", i+1, r.Status)
		}
	}
	s.maxAttempts = 2
	c.load(t, s.json())
	b := newClient(t, c.base, "127.0.0.4")
	for i, want := range []int{401, 429} {
		if r := b.Login("/admin/", "ops@example.com", "wrong", "", nil); r.Status != want {
			t.Fatalf("after POST /load with max_attempts 2, failure %d: %d, want %d", i+1, r.Status, want)
		}
	}
	if r := op.Get("/admin/"); r.Status != 200 {
		t.Fatalf("the session did not survive the second POST /load: %d", r.Status)
	}
}

// Scenario 4: lockouts and sessions survive POST /load and `caddy reload`;
// the lockout still ends when its time is up.
func TestReloadKeepsLockoutAndSession(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	s := defaultSite(mp)
	s.maxAttempts, s.lockout = 2, "12s"
	c := startCaddy(t, s.caddyfile(), "caddyfile")

	locked := newClient(t, c.base, "127.0.0.3")
	locked.Login("/admin/", "ops@example.com", "wrong", "", nil)
	if r := locked.Login("/admin/", "ops@example.com", "wrong", "", nil); r.Status != 429 {
		t.Fatalf("not locked out: %d", r.Status)
	}
	lockedAt := time.Now()
	op := newClient(t, c.base, "127.0.0.1")
	signIn(t, op, mp, map[string]bool{})

	check := func(after string) {
		t.Helper()
		if r := locked.Get("/admin/"); r.Status != 429 {
			t.Fatalf("after %s the lockout is gone: %d", after, r.Status)
		}
		if r := op.Get("/admin/"); r.Status != 200 {
			t.Fatalf("after %s the session is gone: %d", after, r.Status)
		}
	}

	// Through the admin API: the same site as JSON (from caddy adapt), changed.
	adapted := stdout(t, "adapt", "--config", c.config)
	c.load(t, strings.Replace(adapted, "public page", "public page (reloaded)", 1))
	if r := newClient(t, c.base, "127.0.0.1").Get("/"); r.Body != "public page (reloaded)" {
		t.Fatalf("the POST /load did not take effect: %q", r.Body)
	}
	check("POST /load")

	// With `caddy reload`, on a changed file.
	c.write(t, strings.Replace(s.caddyfile(), "public page", "public page (caddy reload)", 1))
	if out, err := run("reload", "--config", c.config, "--adapter", "caddyfile", "--address", c.admin); err != nil {
		t.Fatalf("caddy reload: %v\n%s", err, out)
	}
	if r := newClient(t, c.base, "127.0.0.1").Get("/"); r.Body != "public page (caddy reload)" {
		t.Fatalf("caddy reload did not take effect: %q", r.Body)
	}
	check("caddy reload")

	// When the lockout is over, the client may try again.
	time.Sleep(time.Until(lockedAt.Add(13 * time.Second)))
	if r := locked.Login("/admin/", "ops@example.com", "wrong", "", nil); r.Status != 401 {
		t.Fatalf("after the lockout: %d, want 401 (a fresh attempt)", r.Status)
	}
}

// Scenario 5: the allow-list uses the connection, or the client behind a
// trusted proxy — never a header from anyone else.
func TestAllowListAndSpoofing(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	s := defaultSite(mp)
	c := startCaddy(t, s.caddyfile(), "caddyfile")
	outsider := newClient(t, c.base, "127.0.0.9")
	for _, hdr := range []map[string]string{
		nil,
		{"X-Forwarded-For": "127.0.0.1"},
		{"X-Real-IP": "127.0.0.1"},
		{"Forwarded": "for=127.0.0.1"},
	} {
		if r := outsider.Do("GET", "/admin/", nil, hdr); r.Status != 403 || strings.Contains(r.Body, "<form") {
			t.Fatalf("127.0.0.9 with %v: %d", hdr, r.Status)
		}
	}

	// Now 127.0.0.9 is a trusted proxy.
	s.servers = "servers {\n\t\ttrusted_proxies static 127.0.0.9/32\n\t}"
	c.write(t, s.caddyfile())
	if out, err := run("reload", "--config", c.config, "--adapter", "caddyfile", "--address", c.admin); err != nil {
		t.Fatalf("caddy reload: %v\n%s", err, out)
	}
	proxy := newClient(t, c.base, "127.0.0.9")
	if r := proxy.Do("GET", "/admin/", nil, map[string]string{"X-Forwarded-For": "127.0.0.5"}); r.Status != 401 {
		t.Fatalf("through the trusted proxy for an allowed client: %d, want the login page", r.Status)
	}
	if r := proxy.Do("GET", "/admin/", nil, map[string]string{"X-Forwarded-For": "10.9.9.9"}); r.Status != 403 {
		t.Fatalf("through the trusted proxy for a client outside the list: %d", r.Status)
	}
	// The limiter counts the forwarded client, not the proxy.
	fwd := map[string]string{"X-Forwarded-For": "127.0.0.5"}
	for i, want := range []int{401, 401, 429} {
		if r := proxy.Login("/admin/", "ops@example.com", "wrong", "", fwd); r.Status != want {
			t.Fatalf("failure %d for 127.0.0.5 through the proxy: %d, want %d", i+1, r.Status, want)
		}
	}
	if r := newClient(t, c.base, "127.0.0.5").Get("/admin/"); r.Status != 429 {
		t.Fatalf("127.0.0.5 directly, after being locked through the proxy: %d", r.Status)
	}
	if r := proxy.Do("GET", "/admin/", nil, map[string]string{"X-Forwarded-For": "127.0.0.4"}); r.Status != 401 {
		t.Fatalf("another client through the same proxy: %d (the proxy itself was locked)", r.Status)
	}
}

// Scenario 6: mail down, webhook failing or silent: the login still works,
// each failure is an ERROR, and nothing of ours runs after the app stops.
func TestDeliveryFaults(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	seen := map[string]bool{} // the code mails already read, across the subtests
	t.Run("mail server down", func(t *testing.T) {
		down := startMailpit(t, mailpitOptions{})
		s := defaultSite(down)
		c := startCaddy(t, s.caddyfile(), "caddyfile")
		down.stop()
		cl := newClient(t, c.base, "127.0.0.2")
		if r := cl.Login("/admin/", "ops@example.com", testPassword, "", nil); r.Status != 303 {
			t.Fatalf("right password with the mail server down: %d", r.Status)
		}
		if r := cl.Get("/admin/"); r.Status != 200 || !strings.Contains(r.Body, `name="code"`) {
			t.Fatalf("no code page: %d", r.Status)
		}
		l := c.waitLog(t, "break-glass delivery failed", map[string]string{"channel": "code_email", "level": "error"})
		if !strings.Contains(fmt.Sprint(l["error"]), "refused") {
			t.Errorf("the error does not say why: %v", l["error"])
		}
	})
	for name, hang := range map[string]bool{"webhook answers 500": false, "webhook never answers": true} {
		hook := bgtest.StartWebhook(t)
		hook.SetStatus(500)
		if hang {
			hook.Hang()
		}
		t.Run(name, func(t *testing.T) {
			s := defaultSite(mp)
			s.webhook = hook.URL
			c := startCaddy(t, s.caddyfile(), "caddyfile")
			cl := newClient(t, c.base, "127.0.0.2")
			start := time.Now()
			signIn(t, cl, mp, seen)
			if r := cl.Get("/admin/"); r.Status != 200 {
				t.Fatalf("no session: %d", r.Status)
			}
			if r := hook.Wait(t, 1)[0]; r.JSON == nil { // it was called
				t.Errorf("webhook body %q is not JSON", r.Body)
			}
			if !hang {
				c.waitLog(t, "break-glass delivery failed", map[string]string{"channel": "webhook", "level": "error", "status": "500"})
			}

			// Stop the app (a config without break_glass) — for the silent
			// webhook, while its POST still hangs — then look for any
			// goroutine of ours in the running process. While the app runs,
			// its sweeper shows there: the probe does see our code.
			if !strings.Contains(goroutineDump(t, c), pluginModule+".(*state).sweepLoop") {
				t.Fatal("the goroutine dump does not show the running app's sweeper")
			}
			c.load(t, `{"admin": {"listen": "{ADMIN}"}, "apps": {"http": {"servers": {"s": {"listen": ["127.0.0.1:{PORT}"], "routes": [{"handle": [{"handler": "static_response", "body": "no guard"}]}]}}}}}`)
			if g := ourGoroutines(t, c); g != "" {
				t.Fatalf("goroutines of the plugin are still running after its app stopped:\n%s", g)
			}
			if hang {
				canceled := func() bgtest.Logs {
					return c.logs().Where(func(l map[string]any) bool { return strings.Contains(fmt.Sprint(l["error"]), "canceled") })
				}
				l := bgtest.WaitLog(t, canceled, "break-glass delivery failed", map[string]string{"channel": "webhook", "level": "error"})
				t.Logf("the hanging webhook POST ended %v after the login: %v", time.Since(start).Round(time.Millisecond), l["error"])
			}
		})
	}
}

// ourGoroutines returns the stacks of the running Caddy's goroutines that
// are in this plugin's code, from the admin API's pprof endpoint.
func ourGoroutines(t *testing.T, c *caddy) string {
	t.Helper()
	var ours []string
	for range 50 { // the app stops after the new config is running
		ours = nil
		for _, g := range strings.Split(goroutineDump(t, c), "\n\n") {
			if strings.Contains(g, pluginModule+".") {
				ours = append(ours, g)
			}
		}
		if len(ours) == 0 {
			return ""
		}
		time.Sleep(200 * time.Millisecond)
	}
	return strings.Join(ours, "\n\n")
}

// goroutineDump is every goroutine's stack, from the admin API's pprof.
func goroutineDump(t *testing.T, c *caddy) string {
	t.Helper()
	resp, err := http.Get("http://" + c.admin + "/debug/pprof/goroutine?debug=2")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// Scenario 7: one alert mail per recipient and the webhook's JSON.
func TestAlertsReachEveryChannel(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	hook := bgtest.StartWebhook(t)
	s := defaultSite(mp)
	s.webhook = hook.URL + "/break-glass"
	c := startCaddy(t, s.caddyfile(), "caddyfile")
	signIn(t, newClient(t, c.base, "127.0.0.2"), mp, map[string]bool{})

	ev := hook.Wait(t, 1)[0].JSON
	for k, want := range map[string]string{"event": "break_glass_login", "ip": "127.0.0.2", "severity": "critical"} {
		if ev[k] != want {
			t.Errorf("webhook %s = %v, want %q", k, ev[k], want)
		}
	}
	ts, err := time.Parse(time.RFC3339, fmt.Sprint(ev["timestamp"]))
	if err != nil || time.Since(ts) > time.Minute || !strings.HasSuffix(fmt.Sprint(ev["timestamp"]), "Z") {
		t.Errorf("webhook timestamp %v: %v", ev["timestamp"], err)
	}
	if msg := fmt.Sprint(ev["message"]); !strings.Contains(msg, "127.0.0.2") {
		t.Errorf("webhook message %q does not name the client", msg)
	}
	for _, to := range []string{"sec@example.com", "soc@example.com"} {
		m := mp.waitMail(t, to, "Emergency login used", nil)
		if len(m.To) != 1 || !strings.Contains(m.Text, "127.0.0.2") || !strings.Contains(m.Subject, "127.0.0.2") {
			t.Errorf("alert to %s: to %v, subject %q", to, m.To, m.Subject)
		}
	}
	time.Sleep(500 * time.Millisecond) // a duplicate would have arrived by now
	count := map[string]int{}
	for _, m := range mp.messages(t) {
		if strings.Contains(m.Subject, "Emergency login used") {
			for _, a := range m.To {
				count[a.Address]++
			}
		}
	}
	if count["sec@example.com"] != 1 || count["soc@example.com"] != 1 || len(count) != 2 {
		t.Fatalf("alert mails per recipient: %v", count)
	}
	c.waitLog(t, "break-glass login succeeded", map[string]string{"client_ip": "127.0.0.2", "level": "warn"})
}
