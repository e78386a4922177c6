// One-time codes: how they are made, kept (as a keyed hash, one pending code
// per credential) and checked.

package breakglass

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"html"
	"math/big"
	"net/netip"
	"sync"
	"time"
)

const (
	// codeDigits is the length of an emailed code.
	codeDigits = 6
	// maxWrongCodes voids a pending code after this many wrong guesses at it.
	maxWrongCodes = 3
)

var codeSpace = big.NewInt(1_000_000)

// newCode returns a uniformly random 6-digit code. rand.Int draws by
// rejection, so there is no modulo bias.
func newCode() (string, error) {
	n, err := rand.Int(rand.Reader, codeSpace)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%0*d", codeDigits, n.Int64()), nil
}

// pendingCode is a code waiting to be typed. The code itself is not kept, only
// its HMAC under the state's key.
type pendingCode struct {
	mac     [sha256.Size]byte
	reason  string     // what the operator gave as the reason at step 1
	flow    string     // the step-1 cookie of the login that asked for it
	client  netip.Addr // the client that asked for it
	expires time.Time
	wrong   int
}

// codeResult is the outcome of a code check.
type codeResult int

const (
	codeOK       codeResult = iota
	codeWrong               // bound to this login, but not the right code
	codeVoided              // wrong, and that was the last guess allowed
	codeNotFound            // nothing pending for this login and client
)

// codeBackend is where pending codes are kept: in this process (codeStore)
// or in Caddy's storage (storageCodes). Errors come only from storage.
type codeBackend interface {
	put(scope, code, flow string, client netip.Addr, ttl time.Duration, reason string) (time.Time, error)
	pending(scope, flow string, client netip.Addr) (time.Time, bool)
	// verify checks code; when it is not the pending code, alt (if not
	// nil) may accept it instead (a TOTP code), under the same lock. On
	// codeOK it returns the reason given at step 1.
	verify(scope, flow string, client netip.Addr, code string, alt altCheck) (codeResult, string, error)
	cancel(scope, flow string) error
	pendingFor(scope string) (time.Time, bool)
	sweep() int
}

// altCheck accepts a code other than the pending one (a TOTP code). It runs
// under the credential's code lock, so what it records is atomic with the
// check.
type altCheck func(ctx context.Context, code string) (bool, error)

// codeStore holds at most one pending code per credential (a handler's
// scope: its email and hash): a new login replaces the previous code.
type codeStore struct {
	key []byte
	mu  sync.Mutex
	m   map[string]*pendingCode
}

func newCodeStore(key []byte) *codeStore {
	return &codeStore{key: key, m: make(map[string]*pendingCode)}
}

// codeMAC is what is kept of a code: its HMAC under the state's code key,
// bound to the credential it was issued for.
func codeMAC(key []byte, scope, code string) [sha256.Size]byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(scope))
	h.Write([]byte{0})
	h.Write([]byte(code))
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// put makes code the pending code of identity, replacing any other.
func (s *codeStore) put(identity, code, flow string, client netip.Addr, ttl time.Duration, reason string) (time.Time, error) {
	exp := now().Add(ttl)
	p := &pendingCode{mac: codeMAC(s.key, identity, code), flow: flow, client: client, expires: exp, reason: reason}
	s.mu.Lock()
	s.m[identity] = p
	s.mu.Unlock()
	return exp, nil
}

// pending reports whether identity has a live code bound to this flow and
// client, and until when.
func (s *codeStore) pending(identity, flow string, client netip.Addr) (time.Time, bool) {
	t := now()
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.m[identity]
	if !ok || !p.bound(flow, client, t) {
		return time.Time{}, false
	}
	return p.expires, true
}

func (p *pendingCode) bound(flow string, client netip.Addr, t time.Time) bool {
	return t.Before(p.expires) &&
		hmac.Equal([]byte(p.flow), []byte(flow)) &&
		p.client == client
}

// verify checks code against the pending code of identity. A right code is
// consumed (single use); a wrong one counts against the pending code, which is
// voided at the third. The comparison is constant-time.
func (s *codeStore) verify(identity, flow string, client netip.Addr, code string, alt altCheck) (codeResult, string, error) {
	t := now()
	mac := codeMAC(s.key, identity, code)
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.m[identity]
	if !ok {
		return codeNotFound, "", nil
	}
	if !t.Before(p.expires) {
		delete(s.m, identity)
		return codeNotFound, "", nil
	}
	if !p.bound(flow, client, t) {
		return codeNotFound, "", nil
	}
	if hmac.Equal(mac[:], p.mac[:]) {
		delete(s.m, identity)
		return codeOK, p.reason, nil
	}
	if alt != nil {
		// The TOTP record is in the config's storage: bounded, since every
		// code check waits on this lock meanwhile.
		ctx, cancel := opCtx()
		ok, err := alt(ctx, code)
		cancel()
		if err != nil {
			return codeNotFound, "", err
		}
		if ok {
			delete(s.m, identity)
			return codeOK, p.reason, nil
		}
	}
	p.wrong++
	if p.wrong >= maxWrongCodes {
		delete(s.m, identity)
		return codeVoided, "", nil
	}
	return codeWrong, "", nil
}

// pendingFor reports whether a code is pending for the credential, whoever
// asked for it, and until when (for the admin API; never the code).
func (s *codeStore) pendingFor(identity string) (time.Time, bool) {
	t := now()
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.m[identity]
	if !ok || !t.Before(p.expires) {
		return time.Time{}, false
	}
	return p.expires, true
}

// cancel drops identity's pending code if it belongs to this flow.
func (s *codeStore) cancel(identity, flow string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.m[identity]; ok && hmac.Equal([]byte(p.flow), []byte(flow)) {
		delete(s.m, identity)
	}
	return nil
}

// sweep drops expired codes and returns how many remain.
func (s *codeStore) sweep() int {
	t := now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, p := range s.m {
		if !t.Before(p.expires) {
			delete(s.m, k)
		}
	}
	return len(s.m)
}

// codeMail is the mail that carries a code to the break-glass address. It
// says what the code is for, who asked and until when it works, so that an
// unexpected one is recognised as an alarm.
func codeMail(to, code, clientIP, host string, expires time.Time) mailMessage {
	exp := expires.UTC().Format("15:04:05 MST, 2 Jan 2006")
	text := fmt.Sprintf(`Your break-glass one-time code for %s is:

    %s

It was requested from client IP %s after the break-glass password was
entered correctly. It works once, only in the browser that asked for it,
and expires at %s.

If you did not ask for this code, someone knows the break-glass password:
tell your security team and rotate the password now.
`, host, code, clientIP, exp)
	esc := html.EscapeString
	htmlBody := fmt.Sprintf(`<!doctype html><html><body style="font-family:sans-serif">
<p>Your break-glass one-time code for <strong>%s</strong> is:</p>
<p style="font-size:28px;font-weight:bold;letter-spacing:4px;font-family:monospace">%s</p>
<p>It was requested from client IP <strong>%s</strong> after the break-glass password was entered correctly.
It works once, only in the browser that asked for it, and expires at <strong>%s</strong>.</p>
<p style="color:#b00020">If you did not ask for this code, someone knows the break-glass password:
tell your security team and rotate the password now.</p>
</body></html>`, esc(host), esc(code), esc(clientIP), esc(exp))
	return mailMessage{
		to:      to,
		subject: fmt.Sprintf("[break-glass] Your one-time code for %s (requested from %s)", host, clientIP),
		text:    text,
		html:    htmlBody,
	}
}
