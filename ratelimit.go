// The per-client failure counter and lockout, shared by every handler through
// the app's state.

package breakglass

import (
	"net/netip"
	"sync"
	"time"
)

// now is the clock of the whole package; tests replace it to move time.
var now = time.Now

// limiter counts failed attempts per client key (see limiterKey) inside a
// fixed window and locks a client out once it reaches the maximum. The window
// and the lockout have the same length, as an operator configures one
// duration ("lockout") for both.
type limiter struct {
	mu      sync.Mutex
	clients map[netip.Addr]*limitEntry
	// maxClients bounds how many clients are tracked at once; when full, a
	// new client is refused (fail closed) and no tracked one is evicted.
	maxClients int
}

// defaultMaxTrackedClients is the default bound of the limiter: at 120–150
// bytes a client (BenchmarkLimiterMemory), 100,000 clients take 12–15 MB.
const defaultMaxTrackedClients = 100_000

// limiterBackend is where failures and lockouts are kept: in this process
// (limiter) or in Caddy's storage, shared by a cluster (storageLimiter).
// Errors come only from a storage backend; callers fail closed on them.
type limiterBackend interface {
	lockedUntil(key netip.Addr) (time.Time, bool, error)
	remaining(key netip.Addr, maxAttempts int) int
	reserve(key netip.Addr, maxAttempts int, window time.Duration) (reservation, time.Time, error)
	settle(key netip.Addr, failed bool, maxAttempts int, window time.Duration) (int, time.Time, error)
	reset(key netip.Addr) error
	locked() ([]lockedClient, error)
	unlock(key netip.Addr) (bool, error)
	setMaxClients(n int)
	sweep() int
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
	refusedInFlight             // its failures plus attempts in flight reach the maximum
	refusedFull                 // a new client, and the limiter tracks as many as it may
)

type limitEntry struct {
	failures    int
	inflight    int       // attempts reserved and not yet settled
	windowEnd   time.Time // failures before this moment count together
	lockedUntil time.Time // zero unless locked
}

// expired reports whether the entry holds nothing that still matters at t.
func (e *limitEntry) expired(t time.Time) bool {
	return e.inflight == 0 && !t.Before(e.windowEnd) && !t.Before(e.lockedUntil)
}

func newLimiter() *limiter {
	return &limiter{clients: make(map[netip.Addr]*limitEntry), maxClients: defaultMaxTrackedClients}
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
	e, ok := l.clients[key]
	if !ok || !t.Before(e.lockedUntil) {
		return time.Time{}, false, nil
	}
	return e.lockedUntil, true, nil
}

// remaining returns how many failures the client may still make before it is
// locked out.
func (l *limiter) remaining(key netip.Addr, maxAttempts int) int {
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.clients[key]
	if !ok || !t.Before(e.windowEnd) && !t.Before(e.lockedUntil) {
		return maxAttempts
	}
	return max(maxAttempts-e.failures, 0)
}

// current returns the client's entry with a window that is still running,
// starting a new window (and forgetting old failures) when the last one is
// over; nil when the client is new and the limiter is full. It must be
// called with l.mu held, and not for a locked client.
func (l *limiter) current(key netip.Addr, t time.Time, window time.Duration) *limitEntry {
	e, ok := l.clients[key]
	if !ok {
		if len(l.clients) >= l.maxClients {
			return nil
		}
		e = &limitEntry{windowEnd: t.Add(window)}
		l.clients[key] = e
	} else if !t.Before(e.windowEnd) {
		e.failures, e.windowEnd, e.lockedUntil = 0, t.Add(window), time.Time{}
	}
	return e
}

// reserve claims one attempt before checking it, so that attempts made in
// parallel cannot exceed the limit. It refuses when the client is locked
// (returning until when), when its failures plus the attempts already in
// flight reach maxAttempts, or when the client is new and the limiter full.
// Every reservation must be followed by one settle.
func (l *limiter) reserve(key netip.Addr, maxAttempts int, window time.Duration) (reservation, time.Time, error) {
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.clients[key]; ok && t.Before(e.lockedUntil) {
		return refusedLocked, e.lockedUntil, nil
	}
	e := l.current(key, t, window)
	switch {
	case e == nil:
		return refusedFull, time.Time{}, nil
	case e.failures+e.inflight >= maxAttempts:
		return refusedInFlight, time.Time{}, nil
	}
	e.inflight++
	return reserved, time.Time{}, nil
}

// settle ends a reserved attempt. A failure is counted: it returns the
// attempts left and, when this failure started a lockout, the time it ends.
// A failure settled while the client is already locked changes nothing.
func (l *limiter) settle(key netip.Addr, failed bool, maxAttempts int, window time.Duration) (remaining int, lockedUntil time.Time, err error) {
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.clients[key]; ok && e.inflight > 0 {
		e.inflight--
	}
	if !failed {
		return maxAttempts, time.Time{}, nil
	}
	remaining, lockedUntil = l.failLocked(key, t, maxAttempts, window)
	return remaining, lockedUntil, nil
}

func (l *limiter) failLocked(key netip.Addr, t time.Time, maxAttempts int, window time.Duration) (int, time.Time) {
	if e, ok := l.clients[key]; ok && t.Before(e.lockedUntil) {
		return 0, time.Time{}
	}
	e := l.current(key, t, window)
	if e == nil { // cannot happen after a reservation; fail closed anyway
		return 0, time.Time{}
	}
	e.failures++
	if e.failures >= maxAttempts {
		e.lockedUntil = t.Add(window)
		return 0, e.lockedUntil
	}
	return maxAttempts - e.failures, time.Time{}
}

// reset forgets the client's failures (after a successful login).
func (l *limiter) reset(key netip.Addr) error {
	l.mu.Lock()
	delete(l.clients, key)
	l.mu.Unlock()
	return nil
}

// locked lists the clients locked out now.
func (l *limiter) locked() ([]lockedClient, error) {
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []lockedClient
	for k, e := range l.clients {
		if t.Before(e.lockedUntil) {
			out = append(out, lockedClient{Client: k.String(), Failures: e.failures, LockedUntil: e.lockedUntil})
		}
	}
	return out, nil
}

// unlock forgets a client's failures and lockout; false if it was not
// tracked.
func (l *limiter) unlock(key netip.Addr) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.clients[key]
	if !ok || e.expired(now()) {
		return false, nil
	}
	delete(l.clients, key)
	return true, nil
}

// sweep drops entries that no longer matter and returns how many remain.
func (l *limiter) sweep() int {
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, e := range l.clients {
		if e.expired(t) {
			delete(l.clients, k)
		}
	}
	return len(l.clients)
}
