// The metrics, scraped from the admin endpoint of a running Caddy (in this
// process) while a real flow runs.

package breakglass

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape reads the break-glass series from the admin /metrics endpoint.
func scrape(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "caddy_break_glass_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func TestMetricsMoveAsTheFlowRuns(t *testing.T) {
	w := newWorld(t)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	w.load(strings.Replace(w.caddyfile(2, ""), "admin off", "admin "+admin, 1), "caddyfile")
	before := scrape(t, admin)
	for _, name := range []string{"caddy_break_glass_sessions_active", "caddy_break_glass_lockouts_total", "caddy_break_glass_last_drill_timestamp_seconds"} {
		if _, ok := before[name]; !ok {
			t.Fatalf("%s is not exported; got %v", name, before)
		}
	}

	w.kit("127.0.0.9").Get("/admin/") // forbidden
	bad := w.kit("127.0.0.3")
	bad.Login("/admin/", "ops@example.com", "wrong", "", nil)
	bad.Login("/admin/", "ops@example.com", "wrong", "", nil) // locks it out
	bad.Get("/admin/")                                        // refused: locked
	op := w.kit("127.0.0.2")
	w.signIn(op)
	w.smtp.waitMails(t, 5) // the lockout's two alerts, the code, the login's two alerts

	want := map[string]float64{
		`caddy_break_glass_attempts_total{result="forbidden"}`:                   1,
		`caddy_break_glass_attempts_total{result="bad_credentials"}`:             2,
		`caddy_break_glass_attempts_total{result="locked"}`:                      1,
		`caddy_break_glass_attempts_total{result="code_sent"}`:                   1,
		`caddy_break_glass_attempts_total{result="success"}`:                     1,
		`caddy_break_glass_lockouts_total`:                                       1,
		`caddy_break_glass_deliveries_total{channel="code_email",outcome="ok"}`:  1,
		`caddy_break_glass_deliveries_total{channel="alert_email",outcome="ok"}`: 4, // the login's and the lockout's
		`caddy_break_glass_deliveries_total{channel="webhook",outcome="ok"}`:     2,
		`caddy_break_glass_sessions_active`:                                      1,
	}
	var after map[string]float64
	moved := func() bool {
		after = scrape(t, admin)
		for k, d := range want {
			if after[k]-before[k] != d {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(10 * time.Second); !moved() && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	for k, d := range want {
		if got := after[k] - before[k]; got != d {
			t.Errorf("%s moved by %v, want %v", k, got, d)
		}
	}
	if ts := after["caddy_break_glass_last_success_timestamp_seconds"]; time.Since(time.Unix(int64(ts), 0)) > time.Minute {
		t.Errorf("last_success_timestamp_seconds = %v", ts)
	}

	op.Get("/admin/?break_glass=logout")
	if got := scrape(t, admin)["caddy_break_glass_sessions_active"] - before["caddy_break_glass_sessions_active"]; got != 0 {
		t.Errorf("sessions_active after the logout moved by %v, want 0", got)
	}
}
