// Tests of the memory limiter's own rules: sweeping, attempts in flight and
// its bound on clients. The rules of both backends run in conformance_test.go.

package breakglass

import (
	"net/netip"
	"testing"
	"time"
)

func TestSweepDropsOnlyExpiredEntries(t *testing.T) {
	clk := useTestClock(t)
	l := newLimiter()
	locked, counting := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	l.fail(locked, 1, 10*time.Minute)
	clk.Advance(5 * time.Minute)
	l.fail(counting, 5, 10*time.Minute)
	if n := l.sweep(); n != 2 {
		t.Fatalf("sweep kept %d entries, want 2", n)
	}
	clk.Advance(5 * time.Minute) // the lockout is over; the other window is not
	if n := l.sweep(); n != 1 {
		t.Fatalf("sweep kept %d entries, want 1", n)
	}
	if rem := l.remaining(counting, lim(5, 0)); rem != 4 {
		t.Fatalf("the sweep lost a live failure count: remaining %d, want 4", rem)
	}
}

// In memory only: over storage, a client's attempts never overlap (its
// storage lock is held from reserve to settle), so none is ever in flight
// beside another.
func TestReservationsInFlightCountTowardsTheLimit(t *testing.T) {
	useTestClock(t)
	l := newLimiter()
	k := netip.MustParseAddr("192.0.2.1")
	l.fail(k, 3, time.Minute)
	granted := 0
	for range 10 {
		if res, _ := reserveRes(l, k, 3, time.Minute); res == reserved {
			granted++
		}
	}
	if granted != 2 {
		t.Fatalf("%d attempts reserved with 1 failure of 3 counted, want 2", granted)
	}
	if n := l.sweep(); n != 1 {
		t.Fatal("an entry with attempts in flight was swept")
	}
	l.settle(k, attemptCode, chargeFailed, lim(3, time.Minute))
	_, until, _ := l.settle(k, attemptCode, chargeFailed, lim(3, time.Minute))
	if until.IsZero() {
		t.Fatal("the failures of the reserved attempts did not lock the client")
	}
	if res, _ := reserveRes(l, k, 3, time.Minute); res != refusedLocked {
		t.Fatal("a locked client reserved an attempt")
	}
}

// fail records one failure the way the handler does: reserve, then settle.
func (l *limiter) fail(key netip.Addr, maxAttempts int, window time.Duration) (int, time.Time) {
	if res, _ := reserveRes(l, key, maxAttempts, window); res != reserved {
		return 0, time.Time{}
	}
	rem, until, _ := l.settle(key, attemptCode, chargeFailed, lim(maxAttempts, window))
	return rem, until
}

func TestAFullLimiterRefusesNewClientsAndKeepsTrackedOnes(t *testing.T) {
	useTestClock(t)
	l := newLimiter()
	l.setMaxClients(2)
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	l.fail(a, 1, time.Minute) // locked
	l.fail(b, 5, time.Minute)
	if res, _ := reserveRes(l, c, 5, time.Minute); res != refusedFull {
		t.Fatalf("a new client with the limiter full: %v, want refusedFull", res)
	}
	if res, _ := reserveRes(l, a, 5, time.Minute); res != refusedLocked {
		t.Fatalf("the locked client was evicted: %v", res)
	}
	if res, _ := reserveRes(l, b, 5, time.Minute); res != reserved {
		t.Fatalf("a tracked client was refused: %v", res)
	}
}

// lim is limits with no bound on codes, as most tests want.
func lim(maxAttempts int, window time.Duration) limits {
	return limits{maxAttempts: maxAttempts, window: window}
}

// reserveRes reserves a code attempt and returns only what was decided.
func reserveRes(l limiterBackend, key netip.Addr, maxAttempts int, window time.Duration) (reservation, error) {
	c, err := l.reserve(key, attemptCode, lim(maxAttempts, window))
	return c.res, err
}
