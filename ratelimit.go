// The per-client limits (failures and lockout, codes issued), written once as
// rules on a client's record, and the in-memory backend that keeps the
// records of this process. storage.go keeps the same records in Caddy's
// storage.

package breakglass

import (
	"net/netip"
	"sync"
	"time"
)

// now is the clock of the whole package; tests replace it to move time.
var now = time.Now

// limits are the app's per-client limits. The window and the lockout have
// the same length, as an operator configures one duration ("lockout") for
// both.
type limits struct {
	maxAttempts int           // failures per window before a lockout
	window      time.Duration // the window, and the lockout
	// codesPerClient is how many codes a client may be issued per window,
	// whatever the credential: a right password is not a failure, but each
	// code costs a mail, and a client that keeps asking for codes it never
	// types is refused (before any hashing) until its window ends.
	codesPerClient int
}

// defaultCodesPerClient is the default of limits.codesPerClient.
const defaultCodesPerClient = 3

// attemptKind says what an attempt may lead to: a password attempt may
// issue a code (and so counts against codesPerClient while in flight).
type attemptKind int

const (
	attemptPassword attemptKind = iota
	attemptCode
)

// charge is what a settled attempt is counted as.
type charge int

const (
	chargeNone   charge = iota // nothing to count: right code, or not checked
	chargeFailed               // a failure
	chargeCode                 // the right password: a code was issued
)

// clientRecord is what is kept of one client (a limiterKey). The exported
// fields are what storage keeps; in flight counts only exist in memory, as
// storage holds the client's lock from reserve to settle instead.
type clientRecord struct {
	Failures    int   `json:"failures"`
	Codes       int   `json:"codes,omitempty"` // codes issued in this window
	WindowEnd   int64 `json:"window_end"`      // Unix nanoseconds
	LockedUntil int64 `json:"locked_until"`    // Unix nanoseconds, 0 if not locked

	inflight   int // attempts reserved and not yet settled
	inflightPw int // of which password attempts
}

// The rules. Each takes the time, so that both backends and the tests agree
// on one clock reading per operation.

// locked reports whether the client is locked out at t, and until when.
func (c *clientRecord) locked(t time.Time) (time.Time, bool) {
	if c.LockedUntil != 0 && t.UnixNano() < c.LockedUntil {
		return time.Unix(0, c.LockedUntil), true
	}
	return time.Time{}, false
}

// expired reports whether the record holds nothing that still matters at t.
func (c *clientRecord) expired(t time.Time) bool {
	n := t.UnixNano()
	return c.inflight == 0 && n >= c.WindowEnd && n >= c.LockedUntil
}

// roll starts a new window, forgetting old failures and codes, once the last
// window and any lockout are over.
func (c *clientRecord) roll(t time.Time, l limits) {
	if n := t.UnixNano(); n >= c.WindowEnd && n >= c.LockedUntil {
		c.Failures, c.Codes, c.LockedUntil = 0, 0, 0
		c.WindowEnd = t.Add(l.window).UnixNano()
	}
}

// remaining is how many failures the client may still make at t.
func (c *clientRecord) remaining(t time.Time, l limits) int {
	if n := t.UnixNano(); n >= c.WindowEnd && n >= c.LockedUntil {
		return l.maxAttempts
	}
	return max(l.maxAttempts-c.Failures, 0)
}

// reserve claims one attempt before it is checked, so that attempts made in
// parallel cannot exceed the limits. It refuses a locked client (until its
// lockout ends), a client whose failures plus attempts in flight reach
// maxAttempts, and a password attempt of a client that has had its codes
// for this window (until the window ends) or whose codes plus password
// attempts in flight reach them.
func (c *clientRecord) reserve(t time.Time, kind attemptKind, l limits) (reservation, time.Time) {
	if until, ok := c.locked(t); ok {
		return refusedLocked, until
	}
	c.roll(t, l)
	switch {
	case c.Failures+c.inflight >= l.maxAttempts:
		return refusedInFlight, time.Time{}
	case kind == attemptPassword && l.codesPerClient > 0 && c.Codes >= l.codesPerClient:
		return refusedCodes, time.Unix(0, c.WindowEnd)
	case kind == attemptPassword && l.codesPerClient > 0 && c.Codes+c.inflightPw >= l.codesPerClient:
		return refusedInFlight, time.Time{}
	}
	c.inflight++
	if kind == attemptPassword {
		c.inflightPw++
	}
	return reserved, time.Time{}
}

// settle ends a reserved attempt. A failure is counted: it returns the
// attempts left and, when this failure started a lockout, the time it ends.
// A failure settled while the client is already locked changes nothing.
func (c *clientRecord) settle(t time.Time, kind attemptKind, o charge, l limits) (int, time.Time) {
	if c.inflight > 0 {
		c.inflight--
	}
	if kind == attemptPassword && c.inflightPw > 0 {
		c.inflightPw--
	}
	switch o {
	case chargeCode:
		c.roll(t, l)
		c.Codes++
	case chargeFailed:
		if _, ok := c.locked(t); ok {
			return 0, time.Time{}
		}
		c.roll(t, l)
		c.Failures++
		if c.Failures >= l.maxAttempts {
			c.LockedUntil = t.Add(l.window).UnixNano()
			return 0, time.Unix(0, c.LockedUntil)
		}
	}
	return c.remaining(t, l), time.Time{}
}

// limiterBackend is where client records are kept: in this process
// (limiter) or in Caddy's storage, shared by a cluster (storageLimiter).
// Backends only load, store and lock; the rules are clientRecord's. Errors
// come only from a storage backend; callers fail closed on them.
type limiterBackend interface {
	lockedUntil(key netip.Addr) (time.Time, bool, error)
	remaining(key netip.Addr, l limits) int
	reserve(key netip.Addr, kind attemptKind, l limits) (claim, error)
	settle(key netip.Addr, kind attemptKind, o charge, l limits) (int, time.Time, error)
	locked() ([]lockedClient, error)
	unlock(key netip.Addr) (bool, error)
	setMaxClients(n int)
	sweep() int
}

// claim is the outcome of reserve: whether the attempt may go on, until when
// the client is refused, and its failures in its window (the attempt's
// place in the queue for a hashing slot).
type claim struct {
	res      reservation
	until    time.Time
	failures int
}

// lockedClient is a locked-out client, as the admin API shows it.
type lockedClient struct {
	Client      string    `json:"client"`
	Failures    int       `json:"failures"`
	LockedUntil time.Time `json:"locked_until"`
}

// reservation is the outcome of reserve.
type reservation int

const (
	reserved        reservation = iota
	refusedLocked               // the client is locked out
	refusedInFlight             // its failures (or codes) plus attempts in flight reach the maximum
	refusedFull                 // a new client, and the limiter tracks as many as it may
	refusedCodes                // a password attempt of a client that has had its codes for this window
)

// limiter keeps the client records of this process. maxClients bounds how
// many are tracked at once; when full, a new client is refused (fail
// closed) and no tracked one is evicted.
type limiter struct {
	mu         sync.Mutex
	clients    map[netip.Addr]*clientRecord
	maxClients int
}

// defaultMaxTrackedClients is the default bound of the limiter: at 120–150
// bytes a client (BenchmarkLimiterMemory), 100,000 clients take 12–15 MB.
const defaultMaxTrackedClients = 100_000

func newLimiter() *limiter {
	return &limiter{clients: make(map[netip.Addr]*clientRecord), maxClients: defaultMaxTrackedClients}
}

// setMaxClients changes the bound (the app's max_tracked_clients).
func (l *limiter) setMaxClients(n int) {
	l.mu.Lock()
	l.maxClients = n
	l.mu.Unlock()
}

// lockedUntil returns the end of the client's lockout, if it is locked now.
// It changes nothing, so requests made during a lockout never extend it.
func (l *limiter) lockedUntil(key netip.Addr) (time.Time, bool, error) {
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.clients[key]; ok {
		until, locked := c.locked(t)
		return until, locked, nil
	}
	return time.Time{}, false, nil
}

func (l *limiter) remaining(key netip.Addr, lim limits) int {
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.clients[key]; ok {
		return c.remaining(t, lim)
	}
	return lim.maxAttempts
}

func (l *limiter) reserve(key netip.Addr, kind attemptKind, lim limits) (claim, error) {
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.clients[key]
	if !ok {
		if len(l.clients) >= l.maxClients {
			return claim{res: refusedFull}, nil
		}
		c = &clientRecord{}
		l.clients[key] = c
	}
	res, until := c.reserve(t, kind, lim)
	return claim{res: res, until: until, failures: c.Failures}, nil
}

func (l *limiter) settle(key netip.Addr, kind attemptKind, o charge, lim limits) (int, time.Time, error) {
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.clients[key]
	if !ok { // cannot happen after a reservation; fail closed anyway
		return 0, time.Time{}, nil
	}
	rem, until := c.settle(t, kind, o, lim)
	return rem, until, nil
}

// locked lists the clients locked out now.
func (l *limiter) locked() ([]lockedClient, error) {
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []lockedClient
	for k, c := range l.clients {
		if until, ok := c.locked(t); ok {
			out = append(out, lockedClient{Client: k.String(), Failures: c.Failures, LockedUntil: until})
		}
	}
	return out, nil
}

// unlock forgets a client's failures, codes and lockout; false if it was
// not tracked.
func (l *limiter) unlock(key netip.Addr) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.clients[key]
	if !ok || c.expired(now()) {
		return false, nil
	}
	if c.inflight > 0 {
		// Keep the reservations so that their settle finds them.
		*c = clientRecord{inflight: c.inflight, inflightPw: c.inflightPw}
		return true, nil
	}
	delete(l.clients, key)
	return true, nil
}

// sweep drops records that no longer matter and returns how many remain.
func (l *limiter) sweep() int {
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	return dropWhere(l.clients, func(c *clientRecord) bool { return c.expired(t) })
}

// dropWhere deletes the entries of m that gone says are over, and returns
// how many remain; the caller holds m's lock. The memory backends' sweeps.
func dropWhere[K comparable, V any](m map[K]V, gone func(V) bool) int {
	for k, v := range m {
		if gone(v) {
			delete(m, k)
		}
	}
	return len(m)
}
