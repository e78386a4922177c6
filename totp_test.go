// TOTP against RFC 6238's test vectors, the ±1 step window, and the replay
// record in memory and in storage.

package breakglass

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// RFC 6238, Appendix B: SHA-1, the 20-byte ASCII key "12345678901234567890",
// 8 digits. A 6-digit code is the same value mod 10^6: its last 6 digits.
func TestTOTPMatchesRFC6238TestVectors(t *testing.T) {
	key := []byte("12345678901234567890")
	for _, v := range []struct {
		unix int64
		code string
	}{
		{59, "94287082"},
		{1111111109, "07081804"},
		{1111111111, "14050471"},
		{1234567890, "89005924"},
		{2000000000, "69279037"},
		{20000000000, "65353130"},
	} {
		at := time.Unix(v.unix, 0)
		if got := hotp(key, uint64(totpStep(at)), 8); got != v.code {
			t.Errorf("T=%d: %s, want %s", v.unix, got, v.code)
		}
		if step, ok := totpMatch(key, v.code[2:], at); !ok || step != totpStep(at) {
			t.Errorf("T=%d: the 6-digit code %s was not accepted", v.unix, v.code[2:])
		}
	}
}

func TestTOTPWindowIsOneStepEitherSide(t *testing.T) {
	key := []byte("12345678901234567890")
	at := time.Unix(1234567890, 0)
	cur := totpStep(at)
	for d := int64(-3); d <= 3; d++ {
		code := hotp(key, uint64(cur+d), totpDigits)
		step, ok := totpMatch(key, code, at)
		if want := d >= -1 && d <= 1; ok != want || (ok && step != cur+d) {
			t.Errorf("code of step %+d: accepted %v (step %d), want %v", d, ok, step, want)
		}
	}
	for _, bad := range []string{"", "12345", "1234567", "abcdef"} {
		if _, ok := totpMatch(key, bad, at); ok {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestTOTPSecretDecodingAndURI(t *testing.T) {
	sec, err := newTOTPSecret()
	if err != nil || len(sec) != 32 {
		t.Fatalf("new secret %q: %v", sec, err)
	}
	// As people paste them: lower case, spaced, padded.
	spaced := strings.ToLower(sec[:4] + " " + sec[4:16] + " " + sec[16:])
	a, err := decodeTOTPSecret(spaced + "====")
	b, _ := decodeTOTPSecret(sec)
	if err != nil || string(a) != string(b) || len(b) != 20 {
		t.Fatalf("decoding %q: %v", spaced, err)
	}
	u, err := url.Parse(totpURI(sec, "Caddy break-glass", "ops@example.com"))
	if err != nil || u.Scheme != "otpauth" || u.Host != "totp" || u.Path != "/Caddy break-glass:ops@example.com" ||
		u.Query().Get("secret") != sec || u.Query().Get("digits") != "6" || u.Query().Get("period") != "30" || u.Query().Get("algorithm") != "SHA1" {
		t.Fatalf("uri %v: %v", u, err)
	}
}

func TestTOTPReplayIsRefused(t *testing.T) {
	for name, r := range map[string]totpReplay{
		"memory":  &memoryTOTPReplay{last: map[string]int64{}},
		"storage": storageTOTPReplay{st: &certmagic.FileStorage{Path: t.TempDir()}},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			for _, c := range []struct {
				scope string
				step  int64
				want  bool
			}{
				{"a", 100, true},
				{"a", 100, false}, // the same step twice
				{"a", 99, false},  // an earlier step, still in the window
				{"b", 100, true},  // another credential
				{"a", 101, true},
				{"a", 101, false},
			} {
				if ok, err := r.use(ctx, c.scope, c.step); err != nil || ok != c.want {
					t.Fatalf("use(%s, %d) = %v, %v; want %v", c.scope, c.step, ok, err, c.want)
				}
			}
		})
	}
}
