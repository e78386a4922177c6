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

var failureKinds = []failureKind{
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
	reportMedians(t, h.client(t, "192.0.2.1"), failureKinds, "a wrong password", nil)
}

type failureKind = struct{ name, email, password string }

// reportMedians times failed sign-ins of each kind, interleaved over 15
// rounds so that drift hits every kind alike, each round starting at the
// next kind so that no kind always goes first, and logs each median and its
// ratio to the first kind's; also, if not nil, times extra once a round.
func reportMedians(t *testing.T, c *bgtest.Client, kinds []failureKind, first string, extra func()) {
	tok := c.Get("/admin/").CSRF(t)
	const rounds = 15
	times := make([][]time.Duration, len(kinds)+1)
	for r := range rounds {
		for j := range kinds {
			i := (r + j) % len(kinds)
			k := kinds[i]
			form := bgtest.LoginForm(tok, k.email, k.password, "")
			start := time.Now()
			c.Do("POST", "/admin/", form, nil)
			times[i] = append(times[i], time.Since(start))
		}
		if extra != nil {
			start := time.Now()
			extra()
			times[len(kinds)] = append(times[len(kinds)], time.Since(start))
		}
	}
	base := median(times[0])
	for i, k := range kinds {
		m := median(times[i])
		t.Logf("%-30s median %8v  ratio to %s %.2f", k.name, m.Round(time.Microsecond), first, float64(m)/float64(base))
	}
	if extra != nil {
		t.Logf("%-30s median %8v", "the extra step alone", median(times[len(kinds)]).Round(time.Microsecond))
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
// the same, whichever account its email names, if any. The extra step is
// one argon2id comparison alone.
func TestReportTimingOfAccounts(t *testing.T) {
	if testing.Short() {
		t.Skip("measures timings")
	}
	h, _ := twoAccounts(t, &App{MaxAttempts: 1 << 30}, func(h *Handler) { h.Accounts[0].Hash = testHash(t, 8) })
	h.compare = compareHash // the real comparisons, nothing counting around them
	hash := []byte(argonHash(t))
	reportMedians(t, h.client(t, "192.0.2.1"), []failureKind{
		{"unknown email", "nobody@example.com", testPassword},
		{"alice, wrong password", "alice@example.com", "not the password"},
		{"bob, wrong password", "bob@example.com", "not the password"},
		{"alice's email, bob's password", "alice@example.com", bobPassword},
		{"bob's email, alice's password", "bob@example.com", testPassword},
	}, "an unknown email", func() { _ = compareHash(hash, []byte("not the password")) })
}
