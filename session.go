// Session cookies: signed, bound to the client and to the credential (email
// and hash) of the handler that issued them, revocable server-side (logout).

package breakglass

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"hash"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	sessionCookie = "break_glass_session"
	sessionFormat = "v1"
)

// b64 encodes signatures and tokens. Signatures are compared in their
// encoded, canonical form, so no two cookie strings stand for one signature.
var b64 = base64.RawURLEncoding.Strict()

// session is what a session cookie says.
type session struct {
	ID      string // random, 128 bits, hex; the handle for revocation
	Issued  time.Time
	Expires time.Time
	Client  netip.Addr
	Scope   string // the issuing credential (see Handler.scope)
}

var (
	errSessionMalformed = errors.New("malformed session cookie")
	errSessionSignature = errors.New("bad session signature")
	errSessionExpired   = errors.New("session expired")
	errSessionRevoked   = errors.New("session revoked")
	errSessionClient    = errors.New("session belongs to another client")
	errSessionScope     = errors.New("session belongs to another credential")
)

// maxRevoked bounds the revocations kept (each is a logged-out session that
// has not expired yet). At the bound, new sessions are refused rather than an
// old revocation forgotten: a forgotten revocation would bring a logged-out
// cookie back to life.
var maxRevoked = 100_000

// sessions signs and checks session cookies and remembers revoked ones until
// they would have expired anyway.
type sessions struct {
	key     []byte
	pool    sync.Pool // of *scratch
	mu      sync.RWMutex
	revoked map[string]time.Time // session ID → its expiry
	issued  map[string]issuedSession
	// notBefore ends, per credential, every session issued at or before a
	// moment (RFC 3339, compared as text): the admin API's revoke.
	notBefore map[string]string

	// signed caches the cookie values whose signature checked, so that
	// each request of a signed-in operator costs a map lookup, not an
	// HMAC. Only the signature is cached: expiry, client, revocation and
	// notBefore are checked every time. Only a value this key signed can
	// get in, and the map is emptied when it reaches maxSigned.
	signedMu sync.RWMutex
	signed   map[string]struct{}
}

// maxSigned bounds the cache of checked signatures.
const maxSigned = 4096

// issuedSession is a session issued here and not logged out.
type issuedSession struct {
	expires time.Time
	scope   string
}

func newSessions(key []byte) *sessions {
	st := &sessions{key: key, revoked: make(map[string]time.Time), issued: make(map[string]issuedSession), notBefore: make(map[string]string),
		signed: make(map[string]struct{})}
	st.pool.New = func() any { return &scratch{mac: hmac.New(sha256.New, key)} }
	return st
}

func newSessionID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// issuedLayout writes a session's issue time, and a revoke-all moment, as
// RFC 3339 in UTC with milliseconds always written: fixed width, so that
// comparing two as text compares the times, and fine enough that a sign-in
// just after a revoke is not taken for one before it.
const issuedLayout = "2006-01-02T15:04:05.000Z07:00"

// issuedNotAfter reports whether a session issued at issued was issued at
// or before nb (both in issuedLayout). A cookie from before milliseconds
// were written holds its time to the second ("…:05Z"), which stands for the
// whole second: it is ended by a revoke at any time within that second.
func issuedNotAfter(issued, nb string) bool {
	const toTheSecond = len("2006-01-02T15:04:05Z")
	if len(issued) == toTheSecond && len(nb) > toTheSecond {
		return issued[:toTheSecond-1] <= nb[:toTheSecond-1]
	}
	return issued <= nb
}

// The cookie value is "payload.signature": the payload in clear,
// "v1|id|issued|expires|client|scope" (issued in issuedLayout, expires as Unix
// seconds), and the base64url HMAC-SHA256 of it. The payload holds nothing
// secret, and being readable in place lets a request be checked without
// copying or allocating: the fields are substrings of the header.
func (s session) payload() string {
	return strings.Join([]string{
		sessionFormat,
		s.ID,
		s.Issued.UTC().Format(issuedLayout),
		strconv.FormatInt(s.Expires.Unix(), 10),
		s.Client.String(),
		s.Scope,
	}, "|")
}

// maxCookieLen bounds a session cookie value; a real one is about 150 bytes.
const maxCookieLen = 512

// scratch is what one check needs, pooled so that checking a request's
// session allocates nothing.
type scratch struct {
	mac hash.Hash
	buf [maxCookieLen]byte
	sum [sha256.Size]byte
	enc [44]byte // base64url of a SHA-256 sum, without padding: 43
}

// encode returns the cookie value for s.
func (st *sessions) encode(s session) string {
	p := s.payload()
	m := hmac.New(sha256.New, st.key)
	m.Write([]byte(p))
	return p + "." + b64.EncodeToString(m.Sum(nil))
}

// check verifies a cookie value for this client and credential, right now:
// signature, expiry, binding and revocation. It returns the session's ID and
// issue time (RFC 3339) as substrings of value, and allocates nothing.
func (st *sessions) check(value string, client netip.Addr, scope string) (id, issued string, expires int64, err error) {
	id, issued, got, expires, err := st.open(value, client)
	if err == nil && got != scope {
		return "", "", 0, errSessionScope
	}
	return id, issued, expires, err
}

// open is check for any credential: it returns the session's scope too,
// for the caller to look up.
func (st *sessions) open(value string, client netip.Addr) (id, issued, scope string, expires int64, err error) {
	dot := strings.LastIndexByte(value, '.')
	if dot < 0 || len(value) > maxCookieLen {
		return "", "", "", 0, errSessionMalformed
	}
	payload, sig := value[:dot], value[dot+1:]

	st.signedMu.RLock()
	_, known := st.signed[value]
	st.signedMu.RUnlock()
	if !known {
		if !st.signatureOK(payload, sig) {
			return "", "", "", 0, errSessionSignature
		}
		st.signedMu.Lock()
		if len(st.signed) >= maxSigned {
			clear(st.signed)
		}
		st.signed[value] = struct{}{}
		st.signedMu.Unlock()
	}

	var f [6]string
	rest := payload
	for i := range 5 {
		j := strings.IndexByte(rest, '|')
		if j < 0 {
			return "", "", "", 0, errSessionMalformed
		}
		f[i], rest = rest[:j], rest[j+1:]
	}
	f[5] = rest
	if f[0] != sessionFormat || f[1] == "" {
		return "", "", "", 0, errSessionMalformed
	}
	exp, ok := parseUnix(f[3])
	if !ok {
		return "", "", "", 0, errSessionMalformed
	}
	if now().Unix() >= exp {
		return "", "", "", 0, errSessionExpired
	}
	var addr [64]byte
	if string(client.AppendTo(addr[:0])) != f[4] {
		return "", "", "", 0, errSessionClient
	}
	st.mu.RLock()
	_, revoked := st.revoked[f[1]]
	nb := st.notBefore[f[5]]
	st.mu.RUnlock()
	if revoked || (nb != "" && issuedNotAfter(f[2], nb)) {
		return "", "", "", 0, errSessionRevoked
	}
	return f[1], f[2], f[5], exp, nil
}

// signatureOK checks a payload's signature in constant time, without
// allocating.
func (st *sessions) signatureOK(payload, sig string) bool {
	sc := st.pool.Get().(*scratch)
	defer st.pool.Put(sc)
	sc.mac.Reset()
	n := copy(sc.buf[:], payload)
	sc.mac.Write(sc.buf[:n])
	sum := sc.mac.Sum(sc.sum[:0])
	b64.Encode(sc.enc[:], sum)
	return equalConstantTime(sc.enc[:b64.EncodedLen(len(sum))], sig)
}

// verify is check returning the whole session (for logout and tests).
func (st *sessions) verify(value string, client netip.Addr, scope string) (session, error) {
	id, issued, exp, err := st.check(value, client, scope)
	if err != nil {
		return session{}, err
	}
	iat, err := time.Parse(time.RFC3339, issued)
	if err != nil {
		return session{}, errSessionMalformed
	}
	return session{ID: id, Issued: iat, Expires: time.Unix(exp, 0), Client: client, Scope: scope}, nil
}

// parseUnix parses a non-negative decimal number of seconds.
func parseUnix(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// equalConstantTime compares without revealing where the two differ.
func equalConstantTime(a []byte, b string) bool {
	if len(a) != len(b) {
		return false
	}
	var v byte
	for i := range a {
		v |= a[i] ^ b[i]
	}
	return v == 0
}

// full reports whether no more revocations can be kept, so that no new
// session may be issued.
func (st *sessions) full() bool {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return len(st.revoked) >= maxRevoked
}

// revoke makes the session unusable, even if its cookie is replayed.
func (st *sessions) revoke(s session) { st.markRevoked(s.ID, s.Expires) }

func (st *sessions) markRevoked(id string, expires time.Time) {
	st.mu.Lock()
	st.revoked[id] = expires
	delete(st.issued, id)
	st.mu.Unlock()
}

// track counts a session issued here (for sessions_active).
func (st *sessions) track(s session) {
	st.mu.Lock()
	st.issued[s.ID] = issuedSession{expires: s.Expires, scope: s.Scope}
	st.mu.Unlock()
}

// active counts the sessions issued here that are still live, for one
// credential or ("") for all.
func (st *sessions) active(scope ...string) int {
	t := now()
	st.mu.RLock()
	defer st.mu.RUnlock()
	n := 0
	for _, is := range st.issued {
		if t.Before(is.expires) && (len(scope) == 0 || is.scope == scope[0]) {
			n++
		}
	}
	return n
}

// endAll ends every session of a credential issued up to at, here and, once
// setNotBefore has run there, on every instance; it returns how many live
// sessions issued here it ended.
func (st *sessions) endAll(scope string, at time.Time) int {
	n := st.active(scope)
	st.setNotBefore(scope, at.UTC().Format(issuedLayout))
	st.mu.Lock()
	for id, is := range st.issued {
		if is.scope == scope {
			delete(st.issued, id)
		}
	}
	st.mu.Unlock()
	return n
}

// setNotBefore records a revoke-all moment, keeping the later one.
func (st *sessions) setNotBefore(scope, at string) {
	st.mu.Lock()
	if at > st.notBefore[scope] {
		st.notBefore[scope] = at
	}
	st.mu.Unlock()
}

func (st *sessions) isRevoked(id string) bool {
	st.mu.RLock()
	defer st.mu.RUnlock()
	_, ok := st.revoked[id]
	return ok
}

// sweep forgets revocations of sessions that have expired anyway and returns
// how many remain.
func (st *sessions) sweep() int {
	t := now()
	st.mu.Lock()
	defer st.mu.Unlock()
	for id, exp := range st.revoked {
		if !t.Before(exp) {
			delete(st.revoked, id)
		}
	}
	for id, is := range st.issued {
		if !t.Before(is.expires) {
			delete(st.issued, id)
		}
	}
	return len(st.revoked)
}
