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
}

type limitEntry struct {
	failures    int
	windowEnd   time.Time // failures before this moment count together
	lockedUntil time.Time // zero unless locked
}

// expired reports whether the entry holds nothing that still matters at t.
func (e *limitEntry) expired(t time.Time) bool {
	return !t.Before(e.windowEnd) && !t.Before(e.lockedUntil)
}

func newLimiter() *limiter {
	return &limiter{clients: make(map[netip.Addr]*limitEntry)}
}

// lockedUntil returns the end of the client's lockout, if it is locked now.
// It changes nothing, so requests made during a lockout never extend it.
func (l *limiter) lockedUntil(key netip.Addr) (time.Time, bool) {
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.clients[key]
	if !ok || !t.Before(e.lockedUntil) {
		return time.Time{}, false
	}
	return e.lockedUntil, true
}

// remaining returns how many failures the client may still make before it is
// locked out.
func (l *limiter) remaining(key netip.Addr, maxAttempts int) int {
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.clients[key]
	if !ok || e.expired(t) {
		return maxAttempts
	}
	return max(maxAttempts-e.failures, 0)
}

// fail records one failed attempt. It returns the attempts left and, when this
// failure started a lockout, the time it ends. A failure recorded while the
// client is already locked changes nothing.
func (l *limiter) fail(key netip.Addr, maxAttempts int, window time.Duration) (remaining int, lockedUntil time.Time) {
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.clients[key]
	if ok && t.Before(e.lockedUntil) {
		return 0, time.Time{}
	}
	if !ok || e.expired(t) {
		e = &limitEntry{windowEnd: t.Add(window)}
		l.clients[key] = e
	}
	e.failures++
	if e.failures >= maxAttempts {
		e.lockedUntil = t.Add(window)
		return 0, e.lockedUntil
	}
	return maxAttempts - e.failures, time.Time{}
}

// reset forgets the client's failures (after a successful login).
func (l *limiter) reset(key netip.Addr) {
	l.mu.Lock()
	delete(l.clients, key)
	l.mu.Unlock()
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
