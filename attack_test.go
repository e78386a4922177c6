// Attacks against a running Caddy (in this process, real connections from
// distinct loopback addresses): spoofed forwarding headers, secrets leaking
// into responses or logs, and goroutines left behind by slow or failing
// deliveries.

package breakglass

import (
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/goleak"
)

func TestSpoofedForwardingHeadersFromAnUntrustedPeerChangeNothing(t *testing.T) {
	w := newWorld(t)
	w.load(w.caddyfile(3, ""), "caddyfile")
	spoof := []map[string]string{
		{"X-Forwarded-For": "127.0.0.1"},
		{"X-Real-IP": "127.0.0.1"},
		{"Forwarded": "for=127.0.0.1"},
		{"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "Forwarded": `for="[::1]"`, "True-Client-IP": "127.0.0.1"},
	}
	// Not allowed, whatever it claims.
	for _, hdr := range spoof {
		if r := w.kit("127.0.0.9").Do("GET", "/admin/", nil, hdr); r.Status != http.StatusForbidden {
			t.Fatalf("127.0.0.9 claiming %v: %d, want 403", hdr, r.Status)
		}
	}
	// An allowed client is counted as itself, whatever it claims: its
	// failures under other names lock it out.
	c := w.kit("127.0.0.3")
	for i, hdr := range spoof[:3] {
		if r, want := c.Login("/admin/", "ops@example.com", "wrong", "", hdr), []int{401, 401, 429}[i]; r.Status != want {
			t.Fatalf("failure %d claiming %v: %d, want %d", i+1, hdr, r.Status, want)
		}
	}
	if r := w.kit("127.0.0.1").Get("/admin/"); r.Status != http.StatusUnauthorized {
		t.Fatalf("the client named in the headers was locked instead: %d", r.Status)
	}
}

func TestNoSecretInAnyResponseOrLogLine(t *testing.T) {
	w := newWorld(t)
	w.load(w.caddyfile(3, ""), "caddyfile")
	var responses []string
	record := func(r bgtest.Reply) bgtest.Reply {
		var b strings.Builder
		for k, vs := range r.Header {
			if k == "Set-Cookie" {
				continue // where a cookie is delivered, it is meant to be
			}
			fmt.Fprintf(&b, "%s: %s\n", k, strings.Join(vs, ", "))
		}
		responses = append(responses, b.String()+r.Body)
		return r
	}
	c := w.kit("127.0.0.2")
	record(c.Get("/admin/"))
	record(c.Login("/admin/", "ops@example.com", "wrong", "", nil))
	record(c.Login("/admin/", "nobody@example.com", testPassword, "", nil))
	record(c.Login("/admin/", "ops@example.com", testPassword, "", nil))
	codePage := record(c.Get("/admin/"))
	_, code := w.codeMail(0)
	session := setCookie(record(c.Do("POST", "/admin/", bgtest.CodeForm(codePage.CSRF(t), code), nil)), sessionCookie)
	if session == nil {
		t.Fatal("no session cookie")
	}
	record(c.Get("/admin/inside"))
	record(c.Get("/admin/?break_glass=logout"))
	time.Sleep(200 * time.Millisecond) // alerts logged

	secrets := map[string]string{"the password": testPassword, "the hash": w.hash, "the code": code, "the session cookie": session.Value}
	log := w.wantNotLogged(secrets)
	for name, secret := range secrets {
		for i, r := range responses {
			if strings.Contains(r, secret) {
				t.Errorf("response %d contains %s", i, name)
			}
		}
	}
	if !strings.Contains(log, "break-glass login succeeded") {
		t.Fatal("the log was not captured: the scan proves nothing")
	}
}

func TestGoroutinesEndAfterManyLoginsWithSlowAndFailingDeliveries(t *testing.T) {
	override(t, &webhookTimeout, time.Minute)
	override(t, &deliveryGrace, 200*time.Millisecond)
	ignore := goleak.IgnoreCurrent()

	// The world is a subtest's, so that its servers are stopped by the time
	// the goroutines are counted.
	ok := t.Run("logins", func(t *testing.T) {
		w := newWorld(t)
		slow := startSMTP(t, smtpOptions{delay: time.Minute}) // takes the mail, then sits on it
		silent, failing := bgtest.StartWebhook(t), bgtest.StartWebhook(t)
		silent.Hang()
		failing.SetStatus(http.StatusInternalServerError)
		w.load(strings.Replace(w.caddyfile(100, fmt.Sprintf(`break_glass /a* {
		email ops@example.com
		hash {env.BG_TEST_HASH}
		allowed_ips 127.0.0.0/8
		alert_emails sec@example.com soc@example.com
		alert_webhook %s
		dev_log_code
	}
	break_glass /b* {
		email ops@example.com
		hash {env.BG_TEST_HASH}
		allowed_ips 127.0.0.0/8
		alert_webhook %s
		dev_log_code
	}`, silent.URL, failing.URL)), w.smtp.Addr+" {", slow.Addr+" {\n\t\t\ttimeout 1m", 1), "caddyfile")

		for i := range 8 {
			path := []string{"/a/", "/b/"}[i%2]
			c := w.kit(fmt.Sprintf("127.0.0.%d", 10+i))
			if r := c.SignIn(path, "ops@example.com", testPassword, func() string { return w.lastDevCode(t) }); r.Status != http.StatusSeeOther {
				t.Fatalf("code %d: %d", i, r.Status)
			}
		}
		if n := ourGoroutines(); n < 8 {
			t.Fatalf("only %d goroutines of ours run while deliveries hang: the test proves nothing", n)
		}
		// The slow server holds each delivery for a minute; stopping must cancel
		// them after the grace, not wait for them.
		stopped := make(chan error, 1)
		go func() { stopped <- caddy.Stop() }()
		select {
		case err := <-stopped:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("stopping Caddy waits on the hanging deliveries instead of cancelling them")
		}
		// A goroutine that has just returned may still be on its way out: give
		// the scheduler a moment, as goleak does.
		n := ourGoroutines()
		for deadline := time.Now().Add(2 * time.Second); n != 0 && time.Now().Before(deadline); n = ourGoroutines() {
			time.Sleep(10 * time.Millisecond)
		}
		if n != 0 {
			t.Fatalf("%d goroutines of this package still run after Caddy stopped", n)
		}
	})
	if !ok {
		return
	}
	goleak.VerifyNone(t, ignore,
		// Caddy's own, not ours: its log file roller and a storage lock refresher.
		goleak.IgnoreTopFunction("github.com/DeRuina/timberjack.(*Logger).millRun"),
		goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.keepLockfileFresh"))
}

// lastDevCode reads the newest code logged with dev_log_code.
func (w *world) lastDevCode(t *testing.T) string {
	t.Helper()
	var code string
	if codes := w.log().All("break-glass code (dev_log_code)"); len(codes) > 0 {
		code, _ = codes[len(codes)-1]["code"].(string)
	}
	if code == "" {
		t.Fatal("no code in the log")
	}
	return code
}

// ourGoroutines counts goroutines running this package's code (not tests).
func ourGoroutines() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "caddy-break-glass.(*dispatcher)") || strings.Contains(g, "caddy-break-glass.(*mailer)") ||
			strings.Contains(g, "caddy-break-glass.(*state).sweepLoop") || strings.Contains(g, "caddy-break-glass.postWebhook") {
			n++
		}
	}
	return n
}

// Finding 9 of the second review: a session was bound to the credential's
// scope, the same whenever the hash is, so changing the hash and changing it
// back revived the sessions made before.
func TestAHashChangedAndChangedBackRevivesNoSession(t *testing.T) {
	for _, mode := range []string{"memory", "storage"} {
		t.Run(mode, func(t *testing.T) {
			w := newWorld(t)
			cfg := w.caddyfile(5, "")
			if mode == "storage" {
				cfg = strings.Replace(cfg, "admin off", "admin off\n\tstorage file_system "+t.TempDir(), 1)
				cfg = strings.Replace(cfg, "session_ttl 1h", "session_ttl 1h\n\t\tstate storage", 1)
			}
			w.load(cfg, "caddyfile")
			c := w.kit("127.0.0.2")
			w.signIn(c)
			if r := c.Get("/admin/"); r.Status != http.StatusOK {
				t.Fatalf("no session: %d", r.Status)
			}
			first := w.hash
			t.Setenv("BG_TEST_HASH", testHash(t, 6))
			w.load(cfg, "caddyfile")
			if r := c.Get("/admin/"); r.Status != http.StatusUnauthorized {
				t.Fatalf("the session of the old hash under the new one: %d", r.Status)
			}
			t.Setenv("BG_TEST_HASH", first)
			w.load(cfg, "caddyfile")
			if r := c.Get("/admin/"); r.Status != http.StatusUnauthorized {
				t.Fatalf("the hash changed back revived the old session: %d", r.Status)
			}
			bgtest.WaitLog(t, w.log, "break-glass credential retired: its sessions and codes are ended", nil)
			// A reload that keeps the hash keeps the sessions.
			c2 := w.kit("127.0.0.3")
			w.signIn(c2)
			w.load(cfg, "caddyfile")
			if r := c2.Get("/admin/"); r.Status != http.StatusOK {
				t.Fatalf("a reload with the same hash ended a session: %d", r.Status)
			}
		})
	}
}

// Finding 5 of the second review: behind a proxy that appends to the
// client's own X-Forwarded-For, Caddy without trusted_proxies_strict takes
// the left-most entry, which the client wrote. Strict mode takes the
// right-most untrusted one; without it, the load warns.
func TestTrustedProxiesWithoutStrictModeAreWarnedAbout(t *testing.T) {
	for strict, want := range map[bool]int{
		false: http.StatusUnauthorized, // the spoofed 127.0.0.2 is allowed
		true:  http.StatusForbidden,    // 198.51.100.7 is not
	} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			w := newWorld(t)
			servers := "servers {\n\t\ttrusted_proxies static 127.0.0.1/32\n"
			if strict {
				servers += "\t\ttrusted_proxies_strict\n"
			}
			w.load(strings.Replace(w.caddyfile(5, ""), "admin off", "admin off\n\t"+servers+"\t}", 1), "caddyfile")
			warned := w.log().Find("break-glass: this server trusts proxies without trusted_proxies_strict: a client behind a proxy that appends to X-Forwarded-For can choose the address the allow-list and the limiter see; set trusted_proxies_strict", nil) != nil
			if warned == strict {
				t.Fatalf("strict %v: warned %v", strict, warned)
			}
			// The proxy (127.0.0.1) appended the real client, 198.51.100.7,
			// to what the client sent.
			r := w.kit("127.0.0.1").Do("GET", "/admin/", nil, map[string]string{"X-Forwarded-For": "127.0.0.2, 198.51.100.7"})
			if r.Status != want {
				t.Fatalf("strict %v: a spoofed left-most entry got %d, want %d", strict, r.Status, want)
			}
		})
	}
}
