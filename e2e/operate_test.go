//go:build e2e

// Operating it with the built binary: `caddy break-glass drill` against
// mailpit and a webhook receiver, the drill seen by a running Caddy's
// metrics and status, and the admin commands.

package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
)

// drill runs `caddy break-glass drill` on config and returns its exit code,
// what it printed on stdout, and its log (stderr).
func drill(t *testing.T, config string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(caddyBin, "break-glass", "drill", "--config", config, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "BG_HASH="+hash(t), "BG_SMTP_PASSWORD=s3cret")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running the drill: %v", err)
	}
	return code, stdout.String(), stderr.String()
}

// metric reads one series from the admin /metrics of a running Caddy.
func metric(t *testing.T, c *caddy, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + c.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

func TestDrillCommand(t *testing.T) {
	mp, inner := tlsMailpit(t)
	hook := bgtest.StartWebhook(t)
	s := defaultSite(mp)
	s.smtpInner = inner
	s.webhook = hook.URL + "/break-glass"
	s.servers = "storage file_system " + filepath.Join(t.TempDir(), "storage")
	c := startCaddy(t, s.caddyfile(), "caddyfile", "BG_SMTP_PASSWORD=s3cret")
	if v := metric(t, c, "caddy_break_glass_last_drill_timestamp_seconds"); v != 0 {
		t.Fatalf("last_drill before any drill: %v", v)
	}

	// Every channel up: exit 0, one ok line per channel, and the drill
	// messages where codes and alerts go.
	before := time.Now().Unix()
	code, out, log := drill(t, c.config)
	if code != 0 {
		t.Fatalf("drill with every channel up: exit %d\n%s\n%s", code, out, log)
	}
	t.Logf("drill output:\n%s", out)
	for _, want := range []string{"code_email", "sec@example.com", "soc@example.com", "webhook", "Drill OK: 4 channels delivered"} {
		if !strings.Contains(out, want) {
			t.Fatalf("the drill output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "error") {
		t.Fatalf("a channel failed:\n%s", out)
	}
	for _, to := range []string{"ops@example.com", "sec@example.com", "soc@example.com"} {
		m := mp.waitMail(t, to, "DRILL", nil)
		if !strings.Contains(m.Text, "DRILL") || codeRE.MatchString(m.Text) {
			t.Fatalf("drill mail to %s: %q\n%s", to, m.Subject, m.Text)
		}
	}
	ev := hook.Wait(t, 1)[0].JSON
	if ev["event"] != "break_glass_drill" || ev["severity"] != "info" || !strings.Contains(fmt.Sprint(ev["message"]), "DRILL") {
		t.Fatalf("webhook drill event: %v", ev)
	}

	// The running Caddy on the same storage shows the drill: in its metric
	// (read afresh at most every 10 s) and in `caddy break-glass status`.
	within(t, 20*time.Second, "the running Caddy's last_drill metric did not move after the drill",
		func() bool { return metric(t, c, "caddy_break_glass_last_drill_timestamp_seconds") >= float64(before) })
	if st := stdout(t, "break-glass", "status", "--address", c.admin); !strings.Contains(st, "every channel delivered") || !strings.Contains(st, "ops@example.com") {
		t.Fatalf("status after the drill:\n%s", st)
	}

	// The webhook down: exit non-zero, naming the channel; the mails still go.
	down := filepath.Join(t.TempDir(), "Caddyfile")
	s.webhook = fmt.Sprintf("http://127.0.0.1:%d/break-glass", freePort(t))
	// With an audit_log, which the drill must not create.
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	downCfg := strings.Replace(s.caddyfile(), "alert_emails sec@example.com soc@example.com", "alert_emails sec@example.com soc@example.com\n\t\taudit_log "+audit, 1)
	if err := os.WriteFile(down, []byte(c.expand(downCfg)), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, log = drill(t, down)
	if code == 0 {
		t.Fatalf("drill with the webhook down: exit 0\n%s", out)
	}
	var webhookLine string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "webhook") {
			webhookLine = l
		}
	}
	if !strings.Contains(webhookLine, "error") || !strings.Contains(webhookLine, "refused") {
		t.Fatalf("the webhook line does not show its failure:\n%s", out)
	}
	if !strings.Contains(log, "drill failed: 1 of 4 channels") || !strings.Contains(log, "webhook") {
		t.Fatalf("the error does not name the channel:\n%s", log)
	}
	if _, err := os.Stat(audit); !os.IsNotExist(err) {
		t.Fatalf("the drill created the audit log: %v", err)
	}
	if st := stdout(t, "break-glass", "status", "--address", c.admin); !strings.Contains(st, "FAILED") {
		t.Fatalf("status after a failed drill:\n%s", st)
	}
}

func TestAdminCommands(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	s := defaultSite(mp)
	s.maxAttempts = 2
	c := startCaddy(t, s.caddyfile(), "caddyfile")
	bad := newClient(t, c.base, "127.0.0.3")
	for range 2 {
		bad.Login("/admin/", "ops@example.com", "wrong", "", nil)
	}
	if r := bad.Get("/admin/"); r.Status != http.StatusTooManyRequests {
		t.Fatalf("locked client: %d", r.Status)
	}
	// The admin address comes from the config, as with `caddy stop`.
	if st := stdout(t, "break-glass", "status", "--config", c.config, "--adapter", "caddyfile"); !strings.Contains(st, "127.0.0.3") {
		t.Fatalf("status does not show the locked client:\n%s", st)
	}
	if out := stdout(t, "break-glass", "unlock", "127.0.0.3", "--address", c.admin); !strings.Contains(out, "Unlocked 127.0.0.3") {
		t.Fatalf("unlock: %s", out)
	}
	if r := bad.Get("/admin/"); r.Status != http.StatusUnauthorized {
		t.Fatalf("after unlock: %d, want the login page", r.Status)
	}
	if out, err := run("break-glass", "unlock", "127.0.0.3", "--address", c.admin); err == nil || !strings.Contains(out, "404") {
		t.Fatalf("unlocking an untracked client: %v\n%s", err, out)
	}

	seen := map[string]bool{}
	a, b := newClient(t, c.base, "127.0.0.2"), newClient(t, c.base, "127.0.0.4")
	signIn(t, a, mp, seen)
	signIn(t, b, mp, seen)
	if out := stdout(t, "break-glass", "revoke", "--address", c.admin, "--json"); strings.TrimSpace(out) != `{"revoked":2}` {
		t.Fatalf("revoke --json: %q", out)
	}
	for _, cl := range []*bgtest.Client{a, b} {
		if r := cl.Get("/admin/"); r.Status != http.StatusUnauthorized {
			t.Fatalf("%s after revoke: %d", cl.Name, r.Status)
		}
	}
	c.waitLog(t, "break-glass admin: sessions revoked", map[string]string{"level": "warn"})
}
