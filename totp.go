// TOTP (RFC 6238: HMAC-SHA-1, 6 digits, 30 s steps), the fallback second
// factor for when mail is down: codes, the ±1 step window, and the record of
// the last step used per credential, so that no step signs in twice.

package breakglass

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // RFC 6238's default, what authenticator apps use
	"crypto/subtle"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

const (
	totpPeriod = 30 // seconds per step
	totpSkew   = 1  // steps accepted either side of the current one
	totpDigits = 6
)

var totpEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// decodeTOTPSecret reads a base32 secret (any case, spaces and padding
// ignored). The error never shows the value.
func decodeTOTPSecret(s string) ([]byte, error) {
	s = strings.ToUpper(strings.NewReplacer(" ", "", "-", "", "=", "").Replace(s))
	key, err := totpEncoding.DecodeString(s)
	if err != nil {
		return nil, errors.New("totp_secret: not a base32 secret")
	}
	if len(key) < 10 {
		return nil, fmt.Errorf("totp_secret: %d bytes is too short; use at least 10 (16 base32 characters), as `caddy break-glass totp` makes", len(key))
	}
	return key, nil
}

// newTOTPSecret makes a 160-bit secret, base32 as apps expect it.
func newTOTPSecret() (string, error) {
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return totpEncoding.EncodeToString(b), nil
}

// totpURI is the otpauth:// URI an authenticator app reads (as a QR code).
func totpURI(secret, issuer, account string) string {
	label := url.PathEscape(issuer + ":" + account)
	q := url.Values{"secret": {secret}, "issuer": {issuer}, "algorithm": {"SHA1"},
		"digits": {strconv.Itoa(totpDigits)}, "period": {strconv.Itoa(totpPeriod)}}
	return "otpauth://totp/" + label + "?" + q.Encode()
}

// hotp is RFC 4226's HOTP value of counter, with digits digits.
func hotp(key []byte, counter uint64, digits int) string {
	m := hmac.New(sha1.New, key)
	var c [8]byte
	binary.BigEndian.PutUint64(c[:], counter)
	m.Write(c[:])
	sum := m.Sum(nil)
	off := sum[len(sum)-1] & 0x0f
	v := binary.BigEndian.Uint32(sum[off:off+4]) & 0x7fffffff
	mod := uint32(1)
	for range digits {
		mod *= 10
	}
	return fmt.Sprintf("%0*d", digits, v%mod)
}

// totpStep is the time step of t.
func totpStep(t time.Time) int64 { return t.Unix() / totpPeriod }

// totpMatch returns the step, within ±totpSkew of t's, whose code is code.
// Every step of the window is compared, in constant time.
func totpMatch(key []byte, code string, t time.Time) (int64, bool) {
	if len(code) != totpDigits {
		return 0, false
	}
	cur := totpStep(t)
	var found int64
	ok := 0
	for s := cur - totpSkew; s <= cur+totpSkew; s++ {
		if subtle.ConstantTimeCompare([]byte(hotp(key, uint64(s), totpDigits)), []byte(code)) == 1 {
			found, ok = s, 1
		}
	}
	return found, ok == 1
}

// totpReplay records, per credential, the last TOTP step that signed in: a
// step is accepted only if it is later than that.
type totpReplay interface {
	use(ctx context.Context, scope string, step int64) (bool, error)
}

type memoryTOTPReplay struct {
	mu   sync.Mutex
	last map[string]int64
}

func (m *memoryTOTPReplay) use(_ context.Context, scope string, step int64) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if last, ok := m.last[scope]; ok && step <= last {
		return false, nil
	}
	m.last[scope] = step
	return true, nil
}

// storageTOTPReplay keeps the last step in storage. It is called under the
// credential's code lock, which makes the check and the write atomic across
// instances.
type storageTOTPReplay struct{ st certmagic.Storage }

const totpDir = "break_glass/totp"

func (s storageTOTPReplay) use(ctx context.Context, scope string, step int64) (bool, error) {
	key := totpDir + "/" + scope
	b, err := s.st.Load(ctx, key)
	switch {
	case notExist(err):
	case err != nil:
		return false, err
	default:
		last, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return false, fmt.Errorf("%s: %v", key, err)
		}
		if step <= last {
			return false, nil
		}
	}
	return true, s.st.Store(ctx, key, []byte(strconv.FormatInt(step, 10)))
}

// totpCheck is the altCheck of an account with a TOTP secret.
func (h *Handler) totpCheck(acc *account) altCheck {
	if acc.totpKey == nil {
		return nil
	}
	return func(ctx context.Context, code string) (bool, error) {
		step, ok := totpMatch(acc.totpKey, code, now())
		if !ok {
			return false, nil
		}
		return h.app.totp.use(ctx, acc.credential, step)
	}
}
