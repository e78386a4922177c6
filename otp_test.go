// Tests of code generation, of the memory code store's record and of the
// code mail; the store's rules run on both backends in conformance_test.go.

package breakglass

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestNewCodesAreSixUniformRandomDigits checks each position's digit
// distribution with a chi-squared test; a modulo-biased or constant
// generator fails it.
func TestNewCodesAreSixUniformRandomDigits(t *testing.T) {
	const n = 20000
	var counts [6][10]int
	seen := map[string]bool{}
	for i := range n {
		c, err := newCode()
		if err != nil {
			t.Fatal(err)
		}
		if len(c) != 6 || strings.Trim(c, "0123456789") != "" {
			t.Fatalf("code %q is not 6 digits", c)
		}
		if i < 200 {
			seen[c] = true
		}
		for i := range 6 {
			counts[i][c[i]-'0']++
		}
	}
	if len(seen) < 190 {
		t.Fatalf("only %d distinct codes in 200: not random", len(seen))
	}
	for i := range 6 {
		var chi2 float64
		exp := float64(n) / 10
		for _, o := range counts[i] {
			chi2 += (float64(o) - exp) * (float64(o) - exp) / exp
		}
		// 9 degrees of freedom: p = 0.0001 at 33.7.
		if chi2 > 33.7 {
			t.Fatalf("digit %d is not uniform: chi2 = %.1f, counts %v", i, chi2, counts[i])
		}
	}
}

var (
	clientA = netip.MustParseAddr("192.0.2.10")
	clientB = netip.MustParseAddr("192.0.2.11")
)

// flowA and flowB are two logins' step-1 cookies.
const flowA, flowB = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

func TestCodeStoreKeepsNoCode(t *testing.T) {
	s := newCodeStore([]byte("k"))
	s.put("ops@example.com", "987654", flowA, clientA, time.Minute, "", codeLimits{})
	b, err := json.Marshal(s.m["ops@example.com"])
	if err != nil || strings.Contains(string(b), "987654") || !strings.Contains(string(b), `"mac":"`) {
		t.Fatalf("the code record %s (%v): the code is kept in clear, or no MAC of it", b, err)
	}
}

func TestCodeMailSaysWhatAndWhence(t *testing.T) {
	exp := time.Date(2026, 11, 25, 12, 10, 0, 0, time.UTC)
	m := codeMail("ops@example.com", "042042", "192.0.2.10", "admin.example.com", exp)
	for _, part := range []string{m.text, m.html} {
		for _, want := range []string{"042042", "192.0.2.10", "12:10:00 UTC", "admin.example.com"} {
			if !strings.Contains(part, want) {
				t.Errorf("code mail part lacks %q:\n%s", want, part)
			}
		}
	}
	if strings.Contains(m.subject, "042042") {
		t.Error("the code is in the subject, where lock screens show it")
	}
	if m.to != "ops@example.com" {
		t.Errorf("to = %q", m.to)
	}
}
