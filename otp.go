// One-time codes: how they are made, the rules that keep them (as a keyed
// hash, at most one pending code per client and credential, a bounded
// number per credential and window) and the in-memory backend.

package breakglass

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
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

// codeLimits bound the codes of one credential.
type codeLimits struct {
	// perCredential is how many codes a credential may be issued per
	// window, whoever asks; it bounds the mails and the pending codes.
	perCredential int
	window        time.Duration
}

// defaultCodesPerCredential is the default of codeLimits.perCredential.
const defaultCodesPerCredential = 10

// errCodeBudget refuses a code when the credential has had its codes for
// the window.
var errCodeBudget = errors.New("the credential has been issued as many codes as it may in this window")

// codeRecord is what is kept of one credential's codes: the pending ones
// (never a code itself, only its HMAC under the state's key), at most one
// per client, and how many were issued in the current window. The methods
// are the rules; both backends only load, store and lock records.
type codeRecord struct {
	Pending   []pendingCode `json:"pending,omitempty"`
	Issued    int           `json:"issued,omitempty"`
	WindowEnd int64         `json:"window_end,omitempty"` // Unix nanoseconds
}

// pendingCode is a code waiting to be typed.
type pendingCode struct {
	MAC     string `json:"mac"`    // hex HMAC of the code, bound to the credential
	Flow    string `json:"flow"`   // the step-1 cookie of the login that asked for it
	Client  string `json:"client"` // the client that asked for it
	Expires int64  `json:"expires"`
	Wrong   int    `json:"wrong,omitempty"`
	Reason  string `json:"reason,omitempty"` // what the operator gave at step 1
}

// codeResult is the outcome of a code check.
type codeResult int

const (
	codeOK       codeResult = iota
	codeWrong               // bound to this login, but not the right code
	codeVoided              // wrong, and that was the last guess allowed
	codeNotFound            // nothing pending for this login and client
)

// prune drops the expired codes.
func (r *codeRecord) prune(t time.Time) {
	n := t.UnixNano()
	r.Pending = slices.DeleteFunc(r.Pending, func(p pendingCode) bool { return n >= p.Expires })
}

// empty reports whether the record holds nothing that still matters at t.
func (r *codeRecord) empty(t time.Time) bool {
	r.prune(t)
	return len(r.Pending) == 0 && t.UnixNano() >= r.WindowEnd
}

// issue makes p a pending code, replacing any other of the same client (a
// client's codes never void another client's), unless the credential has
// had its codes for this window.
func (r *codeRecord) issue(t time.Time, p pendingCode, lim codeLimits) bool {
	r.prune(t)
	if t.UnixNano() >= r.WindowEnd {
		r.Issued, r.WindowEnd = 0, t.Add(lim.window).UnixNano()
	}
	if lim.perCredential > 0 && r.Issued >= lim.perCredential {
		return false
	}
	r.Pending = slices.DeleteFunc(r.Pending, func(q pendingCode) bool { return q.Client == p.Client })
	r.Pending = append(r.Pending, p)
	r.Issued++
	return true
}

// find returns the index of the live code bound to this flow and client, or
// -1.
func (r *codeRecord) find(t time.Time, flow string, client netip.Addr) int {
	n, c := t.UnixNano(), client.String()
	for i, p := range r.Pending {
		if n < p.Expires && p.Client == c && hmac.Equal([]byte(p.Flow), []byte(flow)) {
			return i
		}
	}
	return -1
}

// check checks code against the code bound to this flow and client. A right
// code is consumed (single use); a wrong one counts against the pending
// code, which is voided at the third. When code is not the pending one, alt
// (if not nil) may accept it instead (a TOTP code). The comparison is
// constant-time. changed says whether the record must be stored.
func (r *codeRecord) check(ctx context.Context, t time.Time, flow string, client netip.Addr, mac [sha256.Size]byte, code string, alt altCheck) (res codeResult, reason string, changed bool, err error) {
	i := r.find(t, flow, client)
	if i < 0 {
		return codeNotFound, "", false, nil
	}
	p := &r.Pending[i]
	want, _ := hex.DecodeString(p.MAC)
	ok := hmac.Equal(mac[:], want)
	if !ok && alt != nil {
		if ok, err = alt(ctx, code); err != nil {
			return codeNotFound, "", false, err
		}
	}
	if ok {
		reason = p.Reason
		r.Pending = slices.Delete(r.Pending, i, i+1)
		return codeOK, reason, true, nil
	}
	p.Wrong++
	if p.Wrong >= maxWrongCodes {
		r.Pending = slices.Delete(r.Pending, i, i+1)
		return codeVoided, "", true, nil
	}
	return codeWrong, "", true, nil
}

// cancel drops the code of this flow; false if there was none.
func (r *codeRecord) cancel(flow string) bool {
	n := len(r.Pending)
	r.Pending = slices.DeleteFunc(r.Pending, func(p pendingCode) bool { return hmac.Equal([]byte(p.Flow), []byte(flow)) })
	return len(r.Pending) != n
}

// live returns how many codes are pending at t and when the last expires.
func (r *codeRecord) live(t time.Time) (int, time.Time) {
	r.prune(t)
	var last int64
	for _, p := range r.Pending {
		last = max(last, p.Expires)
	}
	if last == 0 {
		return 0, time.Time{}
	}
	return len(r.Pending), time.Unix(0, last)
}

// codeBackend is where pending codes are kept: in this process (codeStore)
// or in Caddy's storage (storageCodes). Errors come only from storage.
type codeBackend interface {
	// put makes code a pending code of the credential (errCodeBudget when
	// it has had its codes for the window).
	put(scope, code, flow string, client netip.Addr, ttl time.Duration, reason string, lim codeLimits) (time.Time, error)
	pending(scope, flow string, client netip.Addr) (time.Time, bool)
	// verify checks code; when it is not the pending code, alt (if not
	// nil) may accept it instead (a TOTP code), under the same lock. On
	// codeOK it returns the reason given at step 1.
	verify(scope, flow string, client netip.Addr, code string, alt altCheck) (codeResult, string, error)
	cancel(scope, flow string) error
	// cancelAll ends every pending code of the credential (a revoke).
	cancelAll(scope string) error
	// pendingFor says how many codes of the credential are pending, whoever
	// asked for them, and until when (for the admin API; never a code).
	pendingFor(scope string) (int, time.Time)
	sweep() int
}

// altCheck accepts a code other than the pending one (a TOTP code). It runs
// under the credential's code lock, so what it records is atomic with the
// check.
type altCheck func(ctx context.Context, code string) (bool, error)

// codeStore keeps the code records of this process.
type codeStore struct {
	key []byte
	mu  sync.Mutex
	m   map[string]*codeRecord
}

func newCodeStore(key []byte) *codeStore {
	return &codeStore{key: key, m: make(map[string]*codeRecord)}
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

// newPending is the pending code of code, as both backends keep it.
func newPending(key []byte, scope, code, flow string, client netip.Addr, exp time.Time, reason string) pendingCode {
	mac := codeMAC(key, scope, code)
	return pendingCode{MAC: hex.EncodeToString(mac[:]), Flow: flow, Client: client.String(), Expires: exp.UnixNano(), Reason: reason}
}

func (s *codeStore) put(scope, code, flow string, client netip.Addr, ttl time.Duration, reason string, lim codeLimits) (time.Time, error) {
	t := now()
	exp := t.Add(ttl)
	p := newPending(s.key, scope, code, flow, client, exp, reason)
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.m[scope]
	if !ok {
		r = &codeRecord{}
		s.m[scope] = r
	}
	if !r.issue(t, p, lim) {
		return time.Time{}, errCodeBudget
	}
	return exp, nil
}

func (s *codeStore) pending(scope, flow string, client netip.Addr) (time.Time, bool) {
	t := now()
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.m[scope]
	if !ok {
		return time.Time{}, false
	}
	if i := r.find(t, flow, client); i >= 0 {
		return time.Unix(0, r.Pending[i].Expires), true
	}
	return time.Time{}, false
}

func (s *codeStore) verify(scope, flow string, client netip.Addr, code string, alt altCheck) (codeResult, string, error) {
	t := now()
	mac := codeMAC(s.key, scope, code)
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.m[scope]
	if !ok {
		return codeNotFound, "", nil
	}
	// The TOTP record is in the config's storage: bounded, since every
	// code check waits on this lock meanwhile.
	ctx, cancel := opCtx()
	defer cancel()
	res, reason, _, err := r.check(ctx, t, flow, client, mac, code, alt)
	return res, reason, err
}

func (s *codeStore) cancel(scope, flow string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.m[scope]; ok {
		r.cancel(flow)
	}
	return nil
}

func (s *codeStore) cancelAll(scope string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.m[scope]; ok {
		r.Pending = nil
	}
	return nil
}

func (s *codeStore) pendingFor(scope string) (int, time.Time) {
	t := now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.m[scope]; ok {
		return r.live(t)
	}
	return 0, time.Time{}
}

// sweep drops expired records and returns how many remain.
func (s *codeStore) sweep() int {
	t := now()
	s.mu.Lock()
	defer s.mu.Unlock()
	return dropWhere(s.m, func(r *codeRecord) bool { return r.empty(t) })
}
