// Tests of code generation and the pending-code store.

package breakglass

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestNewCodeIsSixDigits(t *testing.T) {
	seen := map[string]bool{}
	for range 200 {
		c, err := newCode()
		if err != nil {
			t.Fatal(err)
		}
		if len(c) != 6 || strings.Trim(c, "0123456789") != "" {
			t.Fatalf("code %q is not 6 digits", c)
		}
		seen[c] = true
	}
	if len(seen) < 190 {
		t.Fatalf("only %d distinct codes in 200: not random", len(seen))
	}
}

// TestNewCodeDigitsAreUniform checks each position's digit distribution with
// a chi-squared test; a modulo-biased or constant generator fails it.
func TestNewCodeDigitsAreUniform(t *testing.T) {
	const n = 20000
	var counts [6][10]int
	for range n {
		c, err := newCode()
		if err != nil {
			t.Fatal(err)
		}
		for i := range 6 {
			counts[i][c[i]-'0']++
		}
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

const flowA, flowB = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

func TestCodeWorksOnce(t *testing.T) {
	useTestClock(t)
	s := newCodeStore([]byte("k"))
	s.put("ops@example.com", "123456", flowA, clientA, time.Minute, "", codeLimits{})
	if r, _, _ := s.verify("ops@example.com", flowA, clientA, "123456", nil); r != codeOK {
		t.Fatalf("right code: %v, want codeOK", r)
	}
	if r, _, _ := s.verify("ops@example.com", flowA, clientA, "123456", nil); r != codeNotFound {
		t.Fatalf("second use: %v, want codeNotFound", r)
	}
}

func TestCodeExpires(t *testing.T) {
	clk := useTestClock(t)
	s := newCodeStore([]byte("k"))
	s.put("ops@example.com", "123456", flowA, clientA, 10*time.Minute, "", codeLimits{})
	clk.Advance(10 * time.Minute)
	if _, ok := s.pending("ops@example.com", flowA, clientA); ok {
		t.Fatal("code still pending at its expiry")
	}
	if r, _, _ := s.verify("ops@example.com", flowA, clientA, "123456", nil); r != codeNotFound {
		t.Fatalf("expired code: %v, want codeNotFound", r)
	}
}

func TestCodeIsBoundToItsLoginAndClient(t *testing.T) {
	useTestClock(t)
	s := newCodeStore([]byte("k"))
	s.put("ops@example.com", "123456", flowA, clientA, time.Minute, "", codeLimits{})
	if r, _, _ := s.verify("ops@example.com", flowB, clientA, "123456", nil); r != codeNotFound {
		t.Fatalf("another step-1 cookie: %v, want codeNotFound", r)
	}
	if r, _, _ := s.verify("ops@example.com", flowA, clientB, "123456", nil); r != codeNotFound {
		t.Fatalf("another client: %v, want codeNotFound", r)
	}
	if r, _, _ := s.verify("other@example.com", flowA, clientA, "123456", nil); r != codeNotFound {
		t.Fatalf("another identity: %v, want codeNotFound", r)
	}
	if r, _, _ := s.verify("ops@example.com", flowA, clientA, "123456", nil); r != codeOK {
		t.Fatalf("the attempts from elsewhere spent the code: %v", r)
	}
}

func TestNewLoginReplacesPendingCode(t *testing.T) {
	useTestClock(t)
	s := newCodeStore([]byte("k"))
	s.put("ops@example.com", "111111", flowA, clientA, time.Minute, "", codeLimits{})
	s.put("ops@example.com", "222222", flowB, clientA, time.Minute, "", codeLimits{})
	if r, _, _ := s.verify("ops@example.com", flowA, clientA, "111111", nil); r != codeNotFound {
		t.Fatalf("the replaced code: %v, want codeNotFound", r)
	}
	if r, _, _ := s.verify("ops@example.com", flowB, clientA, "222222", nil); r != codeOK {
		t.Fatalf("the newer code: %v, want codeOK", r)
	}
}

func TestThreeWrongCodesVoidThePendingCode(t *testing.T) {
	useTestClock(t)
	s := newCodeStore([]byte("k"))
	s.put("ops@example.com", "123456", flowA, clientA, time.Minute, "", codeLimits{})
	for i, want := range []codeResult{codeWrong, codeWrong, codeVoided} {
		if r, _, _ := s.verify("ops@example.com", flowA, clientA, "000000", nil); r != want {
			t.Fatalf("wrong code %d: %v, want %v", i+1, r, want)
		}
	}
	if r, _, _ := s.verify("ops@example.com", flowA, clientA, "123456", nil); r != codeNotFound {
		t.Fatalf("right code after 3 wrong ones: %v, want codeNotFound", r)
	}
}

func TestCodeStoreKeepsNoCode(t *testing.T) {
	s := newCodeStore([]byte("k"))
	s.put("ops@example.com", "987654", flowA, clientA, time.Minute, "", codeLimits{})
	b, err := json.Marshal(s.m["ops@example.com"])
	if err != nil || strings.Contains(string(b), "987654") || !strings.Contains(string(b), `"mac":"`) {
		t.Fatalf("the code record %s (%v): the code is kept in clear, or no MAC of it", b, err)
	}
}

func TestCancelDropsOnlyThatFlowsCode(t *testing.T) {
	useTestClock(t)
	s := newCodeStore([]byte("k"))
	s.put("ops@example.com", "123456", flowA, clientA, time.Minute, "", codeLimits{})
	s.cancel("ops@example.com", flowB)
	if _, ok := s.pending("ops@example.com", flowA, clientA); !ok {
		t.Fatal("another flow cancelled the code")
	}
	s.cancel("ops@example.com", flowA)
	if _, ok := s.pending("ops@example.com", flowA, clientA); ok {
		t.Fatal("cancel left the code pending")
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
