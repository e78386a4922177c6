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

// b64 is strict: a value with non-zero padding bits is refused, so no two
// different cookie strings decode to the same bytes.
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
	mu      sync.RWMutex
	revoked map[string]time.Time // session ID → its expiry
}

func newSessions(key []byte) *sessions {
	return &sessions{key: key, revoked: make(map[string]time.Time)}
}

func newSessionID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// payload is "v1|id|issued|expires|client|scope".
func (s session) payload() string {
	return strings.Join([]string{
		sessionFormat,
		s.ID,
		strconv.FormatInt(s.Issued.Unix(), 10),
		strconv.FormatInt(s.Expires.Unix(), 10),
		s.Client.String(),
		s.Scope,
	}, "|")
}

func (st *sessions) sign(payload []byte) []byte {
	h := hmac.New(sha256.New, st.key)
	h.Write(payload)
	return h.Sum(nil)
}

// encode returns the cookie value for s.
func (st *sessions) encode(s session) string {
	p := []byte(s.payload())
	return b64.EncodeToString(p) + "." + b64.EncodeToString(st.sign(p))
}

// decode checks the signature and the expiry of a cookie value and returns
// the session it names. Binding (client, scope) and revocation are checked
// by verify.
func (st *sessions) decode(value string) (session, error) {
	var s session
	enc, sig, ok := strings.Cut(value, ".")
	if !ok || len(value) > 1024 {
		return s, errSessionMalformed
	}
	p, err := b64.DecodeString(enc)
	if err != nil {
		return s, errSessionMalformed
	}
	mac, err := b64.DecodeString(sig)
	if err != nil {
		return s, errSessionMalformed
	}
	if !hmac.Equal(mac, st.sign(p)) {
		return s, errSessionSignature
	}
	f := strings.SplitN(string(p), "|", 6)
	if len(f) != 6 || f[0] != sessionFormat {
		return s, errSessionMalformed
	}
	iat, err1 := strconv.ParseInt(f[2], 10, 64)
	exp, err2 := strconv.ParseInt(f[3], 10, 64)
	client, err3 := netip.ParseAddr(f[4])
	if err1 != nil || err2 != nil || err3 != nil || f[1] == "" {
		return s, errSessionMalformed
	}
	s = session{ID: f[1], Issued: time.Unix(iat, 0), Expires: time.Unix(exp, 0), Client: client, Scope: f[5]}
	if !now().Before(s.Expires) {
		return s, errSessionExpired
	}
	return s, nil
}

// verify returns the session of a cookie value if it is valid for this
// client and credential right now.
func (st *sessions) verify(value string, client netip.Addr, scope string) (session, error) {
	s, err := st.decode(value)
	if err != nil {
		return s, err
	}
	if s.Client != client {
		return s, errSessionClient
	}
	if s.Scope != scope {
		return s, errSessionScope
	}
	st.mu.RLock()
	_, revoked := st.revoked[s.ID]
	st.mu.RUnlock()
	if revoked {
		return s, errSessionRevoked
	}
	return s, nil
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
	return len(st.revoked)
}
