// Tests of the per-client failure counter and lockout.

package breakglass

import (
	"net/netip"
	"testing"
	"time"
)

func TestLimiterLocksOutAtMaxAttempts(t *testing.T) {
	clk := useTestClock(t)
	l := newLimiter()
	k := netip.MustParseAddr("192.0.2.1")
	for i := 1; i < 5; i++ {
		rem, until := l.fail(k, 5, 15*time.Minute)
		if rem != 5-i || !until.IsZero() {
			t.Fatalf("failure %d: remaining %d, locked until %v; want %d, not locked", i, rem, until, 5-i)
		}
		if _, locked, _ := l.lockedUntil(k); locked {
			t.Fatalf("locked after %d failures", i)
		}
	}
	rem, until := l.fail(k, 5, 15*time.Minute)
	if rem != 0 || !until.Equal(clk.Now().Add(15*time.Minute)) {
		t.Fatalf("5th failure: remaining %d, until %v; want 0 and a 15m lockout", rem, until)
	}
	got, locked, _ := l.lockedUntil(k)
	if !locked || !got.Equal(until) {
		t.Fatalf("lockedUntil = %v, %v; want %v, true", got, locked, until)
	}
}

func TestLockoutIsNotExtendedDuringLockout(t *testing.T) {
	clk := useTestClock(t)
	l := newLimiter()
	k := netip.MustParseAddr("192.0.2.1")
	var until time.Time
	for range 3 {
		_, until = l.fail(k, 3, 10*time.Minute)
	}
	for range 9 {
		clk.Advance(time.Minute)
		if _, u := l.fail(k, 3, 10*time.Minute); !u.IsZero() {
			t.Fatal("a failure during the lockout started a new one")
		}
		if got, _, _ := l.lockedUntil(k); !got.Equal(until) {
			t.Fatalf("lockout moved from %v to %v", until, got)
		}
	}
	clk.Advance(time.Minute) // 10m after the lockout began: it is over
	if _, locked, _ := l.lockedUntil(k); locked {
		t.Fatal("still locked after the lockout ended")
	}
	if rem := l.remaining(k, lim(3, 0)); rem != 3 {
		t.Fatalf("after the lockout the client has %d attempts, want a fresh 3", rem)
	}
}

func TestFailuresOutsideTheWindowAreForgotten(t *testing.T) {
	clk := useTestClock(t)
	l := newLimiter()
	k := netip.MustParseAddr("192.0.2.1")
	l.fail(k, 3, time.Minute)
	l.fail(k, 3, time.Minute)
	clk.Advance(time.Minute)
	if rem, until := l.fail(k, 3, time.Minute); rem != 2 || !until.IsZero() {
		t.Fatalf("first failure of a new window: remaining %d, until %v; want 2, not locked", rem, until)
	}
}

func TestUnlockForgetsFailures(t *testing.T) {
	useTestClock(t)
	l := newLimiter()
	k := netip.MustParseAddr("192.0.2.1")
	for range 4 {
		l.fail(k, 5, time.Minute)
	}
	if ok, _ := l.unlock(k); !ok {
		t.Fatal("unlock did not find the client")
	}
	if rem := l.remaining(k, lim(5, 0)); rem != 5 {
		t.Fatalf("remaining after unlock = %d, want 5", rem)
	}
}

func TestClientsAreCountedSeparately(t *testing.T) {
	useTestClock(t)
	l := newLimiter()
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	for range 3 {
		l.fail(a, 3, time.Minute)
	}
	if _, locked, _ := l.lockedUntil(b); locked {
		t.Fatal("another client's failures locked this one")
	}
	if rem := l.remaining(b, lim(3, 0)); rem != 3 {
		t.Fatalf("remaining for the other client = %d, want 3", rem)
	}
}

func TestIPv6ClientsInOne64ShareACounter(t *testing.T) {
	useTestClock(t)
	l := newLimiter()
	k1 := limiterKey(netip.MustParseAddr("2001:db8:1:2::1"))
	k2 := limiterKey(netip.MustParseAddr("2001:db8:1:2:ffff:ffff:ffff:fffe"))
	other := limiterKey(netip.MustParseAddr("2001:db8:1:3::1"))
	l.fail(k1, 2, time.Minute)
	if _, until := l.fail(k2, 2, time.Minute); until.IsZero() {
		t.Fatal("two addresses of one /64 did not share a counter")
	}
	if _, locked, _ := l.lockedUntil(other); locked {
		t.Fatal("the neighbouring /64 was locked too")
	}
}

func TestIPv4MappedAndIPv4ShareACounter(t *testing.T) {
	useTestClock(t)
	l := newLimiter()
	mapped, _ := parseClientIP("::ffff:192.0.2.7")
	plain, _ := parseClientIP("192.0.2.7")
	l.fail(limiterKey(mapped), 2, time.Minute)
	if _, until := l.fail(limiterKey(plain), 2, time.Minute); until.IsZero() {
		t.Fatal("::ffff:192.0.2.7 and 192.0.2.7 were counted apart")
	}
}

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

func TestSettlingASuccessFreesTheReservation(t *testing.T) {
	useTestClock(t)
	l := newLimiter()
	k := netip.MustParseAddr("192.0.2.1")
	for range 5 {
		if res, _ := reserveRes(l, k, 1, time.Minute); res != reserved {
			t.Fatal("a settled success still held the only attempt")
		}
		l.settle(k, attemptCode, chargeNone, lim(1, time.Minute))
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
