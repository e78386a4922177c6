// Timing of failed logins, side by side: a wrong email, a wrong password and
// an over-long password must cost the same (one bcrypt comparison at the
// configured cost). The structural proof is
// TestEveryLoginCostsExactlyOneComparisonAtTheConfiguredCost; this reports
// the measured medians and their ratios, and asserts nothing about time.

package breakglass

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
)

var failureKinds = []struct{ name, email, password string }{
	{"wrong password", "ops@example.com", "not the password"},
	{"wrong email", "nobody@example.com", testPassword},
	{"over-long password", "ops@example.com", testPassword + strings.Repeat("x", 100)},
}

func TestReportTimingOfFailedLogins(t *testing.T) {
	if testing.Short() {
		t.Skip("measures timings")
	}
	h := newTestHandler(t, &App{MaxAttempts: 1 << 30}, func(h *Handler) { h.Hash = testHash(t, 8) })
	h.compare = nil // the real bcrypt comparison, nothing counting around it
	if err := h.setup(h.app, h.logger); err != nil {
		t.Fatal(err)
	}
	c := h.client(t, "192.0.2.1")
	tok := c.Get("/admin/").CSRF(t)
	const rounds = 15
	times := make([][]time.Duration, len(failureKinds))
	for range rounds { // interleaved, so that drift hits every kind alike
		for i, k := range failureKinds {
			form := bgtest.LoginForm(tok, k.email, k.password, "")
			start := time.Now()
			c.Do("POST", "/admin/", form, nil)
			times[i] = append(times[i], time.Since(start))
		}
	}
	base := median(times[0])
	for i, k := range failureKinds {
		m := median(times[i])
		t.Logf("%-20s median %8v  ratio to a wrong password %.2f", k.name, m.Round(time.Microsecond), float64(m)/float64(base))
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkFailedLogin reports the cost of each kind of failed login at
// bcrypt cost 10: `go test -bench FailedLogin -run '^$'`.
func BenchmarkFailedLogin(b *testing.B) {
	for _, k := range failureKinds {
		b.Run(strings.ReplaceAll(k.name, " ", "_"), func(b *testing.B) {
			h := newTestHandler(b, &App{MaxAttempts: 1 << 30}, func(h *Handler) { h.Hash = testHash(b, 10) })
			h.compare = nil
			if err := h.setup(h.app, h.logger); err != nil {
				b.Fatal(err)
			}
			c := h.client(b, "192.0.2.1")
			form := bgtest.LoginForm(c.Get("/admin/").CSRF(b), k.email, k.password, "")
			b.ResetTimer()
			for b.Loop() {
				c.Do("POST", "/admin/", form, nil)
			}
		})
	}
}

// TestReportTimingOfAccounts is the same report with two accounts of two
// kinds of hash (alice: bcrypt cost 8, bob: argon2id with Caddy's
// defaults): every failure compares one hash of each kind, so each costs
// the same, whichever account its email names, if any. It also reports one
// argon2id comparison alone.
func TestReportTimingOfAccounts(t *testing.T) {
	if testing.Short() {
		t.Skip("measures timings")
	}
	h, _ := twoAccounts(t, &App{MaxAttempts: 1 << 30}, func(h *Handler) { h.Accounts[0].Hash = testHash(t, 8) })
	h.compare = compareHash // the real comparisons, nothing counting around them
	c := h.client(t, "192.0.2.1")
	tok := c.Get("/admin/").CSRF(t)
	kinds := []struct{ name, email, password string }{
		{"unknown email", "nobody@example.com", testPassword},
		{"alice, wrong password", "alice@example.com", "not the password"},
		{"bob, wrong password", "bob@example.com", "not the password"},
		{"alice's email, bob's password", "alice@example.com", bobPassword},
		{"bob's email, alice's password", "bob@example.com", testPassword},
	}
	const rounds = 15
	times := make([][]time.Duration, len(kinds))
	var argon []time.Duration
	hash := []byte(argonHash(t))
	for range rounds { // interleaved, so that drift hits every kind alike
		for i, k := range kinds {
			form := bgtest.LoginForm(tok, k.email, k.password, "")
			start := time.Now()
			c.Do("POST", "/admin/", form, nil)
			times[i] = append(times[i], time.Since(start))
		}
		start := time.Now()
		_ = compareHash(hash, []byte("not the password"))
		argon = append(argon, time.Since(start))
	}
	base := median(times[0])
	for i, k := range kinds {
		m := median(times[i])
		t.Logf("%-30s median %8v  ratio to an unknown email %.2f", k.name, m.Round(time.Microsecond), float64(m)/float64(base))
	}
	t.Logf("%-30s median %8v", "one argon2id comparison", median(argon).Round(time.Microsecond))
}
