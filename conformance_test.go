// One conformance suite for the limiter and the code store: every behaviour
// runs against both backends, this process's memory and Caddy's file
// storage, with the movable clock.

package breakglass

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

type backends struct {
	limiter limiterBackend
	codes   codeBackend
	clk     *testClock // the movable package clock, set once the backend is made
}

// eachBackend runs fn against a fresh memory state and a fresh storage
// state.
func eachBackend(t *testing.T, fn func(t *testing.T, b backends)) {
	t.Run("memory", func(t *testing.T) {
		fn(t, backends{newLimiter(), newCodeStore([]byte("k")), useTestClock(t)})
	})
	t.Run("storage", func(t *testing.T) {
		s := newStorageTestState(t, &certmagic.FileStorage{Path: t.TempDir()})
		fn(t, backends{s.limiter, s.codes, useTestClock(t)})
	})
}

var confClient = netip.MustParseAddr("192.0.2.1")

// tryAttempt reserves and settles one attempt of confClient, returning what
// reserve said and, when reserved, what settle said.
func tryAttempt(t *testing.T, l limiterBackend, kind attemptKind, o charge, lm limits) (reservation, int, time.Time) {
	t.Helper()
	return tryAttemptFrom(t, l, confClient, kind, o, lm)
}

// tryAttemptFrom is tryAttempt of the client key.
func tryAttemptFrom(t *testing.T, l limiterBackend, key netip.Addr, kind attemptKind, o charge, lm limits) (reservation, int, time.Time) {
	t.Helper()
	c, err := l.reserve(key, kind, lm)
	if err != nil {
		t.Fatal(err)
	}
	if c.res != reserved {
		return c.res, 0, c.until
	}
	rem, until, err := l.settle(key, kind, o, lm)
	if err != nil {
		t.Fatal(err)
	}
	return reserved, rem, until
}

func TestConformanceLockoutAtMaxAttemptsAndNotExtended(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backends) {
		lm := limits{maxAttempts: 3, window: 10 * time.Minute}
		var until time.Time
		for i := 1; i <= 3; i++ {
			if _, locked, _ := b.limiter.lockedUntil(confClient); locked {
				t.Fatalf("locked after %d failures", i-1)
			}
			res, rem, u := tryAttempt(t, b.limiter, attemptCode, chargeFailed, lm)
			if res != reserved || rem != 3-i || u.IsZero() != (i < 3) {
				t.Fatalf("failure %d: %v, %d left, locked until %v", i, res, rem, u)
			}
			until = u
		}
		if got, locked, _ := b.limiter.lockedUntil(confClient); !locked || !got.Equal(until) || !until.Equal(b.clk.Now().Add(10*time.Minute)) {
			t.Fatalf("locked until %v, lockedUntil = %v, %v; want a 10m lockout", until, got, locked)
		}
		// Another client is counted apart.
		other := netip.MustParseAddr("192.0.2.2")
		if _, locked, _ := b.limiter.lockedUntil(other); locked || b.limiter.remaining(other, lm) != 3 {
			t.Fatal("another client's failures locked this one or spent its attempts")
		}
		// No attempt during the lockout starts a new one or moves it.
		for range 9 {
			b.clk.Advance(time.Minute)
			for _, kind := range []attemptKind{attemptPassword, attemptCode} {
				res, _, u := tryAttempt(t, b.limiter, kind, chargeFailed, lm)
				if got, _, _ := b.limiter.lockedUntil(confClient); res != refusedLocked || !u.Equal(until) || !got.Equal(until) {
					t.Fatalf("during the lockout: %v until %v (lockedUntil %v), want refusedLocked until %v", res, u, got, until)
				}
			}
		}
		b.clk.Advance(time.Minute) // 10m after the lockout began: it is over
		if _, locked, _ := b.limiter.lockedUntil(confClient); locked || b.limiter.remaining(confClient, lm) != 3 {
			t.Fatal("after the lockout the client is still locked or has not a fresh 3 attempts")
		}
		if res, rem, _ := tryAttempt(t, b.limiter, attemptCode, chargeFailed, lm); res != reserved || rem != 2 {
			t.Fatalf("after the lockout: %v, %d left; want a fresh window", res, rem)
		}
	})
}

func TestConformanceAddressesOfOneClientShareACounter(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backends) {
		lm := limits{maxAttempts: 2, window: time.Minute}
		for _, c := range []struct {
			first, then string
			shared      bool
		}{
			{"2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe", true}, // one /64
			{"2001:db8:1:2::1", "2001:db8:1:3::1", false},                 // the neighbouring /64 of a locked one
			{"::ffff:192.0.2.7", "192.0.2.7", true},                       // IPv4-mapped and IPv4
		} {
			first, _ := parseClientIP(c.first)
			then, _ := parseClientIP(c.then)
			tryAttemptFrom(t, b.limiter, limiterKey(first), attemptCode, chargeFailed, lm)
			_, _, until := tryAttemptFrom(t, b.limiter, limiterKey(then), attemptCode, chargeFailed, lm)
			if _, locked, _ := b.limiter.lockedUntil(limiterKey(then)); locked == until.IsZero() || locked != c.shared {
				t.Errorf("a failure from %s, then one from %s: locked %v (until %v), want %v", c.first, c.then, locked, until, c.shared)
			}
		}
	})
}

func TestConformanceFailuresAreForgottenAfterTheirWindowAndOnUnlock(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backends) {
		lm := limits{maxAttempts: 3, window: time.Minute}
		tryAttempt(t, b.limiter, attemptCode, chargeFailed, lm)
		tryAttempt(t, b.limiter, attemptCode, chargeFailed, lm)
		b.clk.Advance(time.Minute)
		if res, rem, until := tryAttempt(t, b.limiter, attemptCode, chargeFailed, lm); res != reserved || rem != 2 || !until.IsZero() {
			t.Fatalf("first failure of a new window: %v, %d left, until %v; want 2 left, not locked", res, rem, until)
		}
		tryAttempt(t, b.limiter, attemptCode, chargeFailed, lm)
		if ok, err := b.limiter.unlock(confClient); !ok || err != nil {
			t.Fatalf("unlock did not find the client: %v", err)
		}
		if rem := b.limiter.remaining(confClient, lm); rem != 3 {
			t.Fatalf("remaining after unlock = %d, want 3", rem)
		}
	})
}

// locked lists the clients locked out now, with their failures and until
// when, and no one else (the admin API's list).
func TestConformanceLockedListsLockedOutClientsOnly(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backends) {
		lm := limits{maxAttempts: 2, window: time.Minute}
		failing := netip.MustParseAddr("192.0.2.2")
		tryAttemptFrom(t, b.limiter, failing, attemptCode, chargeFailed, lm)
		tryAttempt(t, b.limiter, attemptCode, chargeFailed, lm)
		_, _, until := tryAttempt(t, b.limiter, attemptCode, chargeFailed, lm)
		got, err := b.limiter.locked()
		if err != nil || len(got) != 1 || got[0].Client != confClient.String() || got[0].Failures != 2 || !got[0].LockedUntil.Equal(until) {
			t.Fatalf("locked = %+v, %v; want %s alone, 2 failures, until %v", got, err, confClient, until)
		}
		b.clk.Advance(time.Minute)
		if got, err := b.limiter.locked(); err != nil || len(got) != 0 {
			t.Fatalf("locked after the lockout = %+v, %v; want none", got, err)
		}
	})
}

func TestConformanceASettledSuccessFreesItsAttempt(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backends) {
		for range 5 {
			if res, _, _ := tryAttempt(t, b.limiter, attemptCode, chargeNone, limits{maxAttempts: 1, window: time.Minute}); res != reserved {
				t.Fatalf("a settled success still held the only attempt: %v", res)
			}
		}
	})
}

func TestConformanceCodesPerClientRefusePasswordsUntilTheWindowEnds(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backends) {
		lm := limits{maxAttempts: 5, window: 15 * time.Minute, codesPerClient: 2}
		start := b.clk.Now()
		for i := range 2 {
			if res, _, _ := tryAttempt(t, b.limiter, attemptPassword, chargeCode, lm); res != reserved {
				t.Fatalf("code %d: %v", i+1, res)
			}
		}
		res, _, until := tryAttempt(t, b.limiter, attemptPassword, chargeCode, lm)
		if res != refusedCodes || !until.Equal(start.Add(15*time.Minute)) {
			t.Fatalf("third code: %v until %v, want refusedCodes until the window ends", res, until)
		}
		// A code attempt is still allowed: the client may type the code it has.
		if res, _, _ := tryAttempt(t, b.limiter, attemptCode, chargeNone, lm); res != reserved {
			t.Fatalf("a code attempt after the codes ran out: %v", res)
		}
		if rem := b.limiter.remaining(confClient, lm); rem != 5 {
			t.Fatalf("codes counted as failures: %d left", rem)
		}
		b.clk.Advance(15 * time.Minute)
		if res, _, _ := tryAttempt(t, b.limiter, attemptPassword, chargeCode, lm); res != reserved {
			t.Fatalf("after the window: %v", res)
		}
	})
}

func TestConformanceFailuresAreReportedForTheHashingQueue(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backends) {
		lm := limits{maxAttempts: 5, window: time.Minute}
		tryAttempt(t, b.limiter, attemptPassword, chargeFailed, lm)
		tryAttempt(t, b.limiter, attemptPassword, chargeFailed, lm)
		c, err := b.limiter.reserve(confClient, attemptPassword, lm)
		if err != nil || c.res != reserved || c.failures != 2 {
			t.Fatalf("reserve: %+v %v, want reserved with 2 failures", c, err)
		}
		if _, _, err := b.limiter.settle(confClient, attemptPassword, chargeNone, lm); err != nil {
			t.Fatal(err)
		}
	})
}

func TestConformanceAPendingCodePerClientAndCredential(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backends) {
		cl := codeLimits{perCredential: 10, window: time.Hour}
		other := netip.MustParseAddr("192.0.2.2")
		if _, err := b.codes.put("s", "111111", flowA, confClient, time.Minute, "first", cl); err != nil {
			t.Fatal(err)
		}
		// Another client's code leaves it; the same client's replaces it.
		if _, err := b.codes.put("s", "222222", flowB, other, time.Minute, "", cl); err != nil {
			t.Fatal(err)
		}
		if n, _ := b.codes.pendingFor("s"); n != 2 {
			t.Fatalf("%d codes pending, want 2", n)
		}
		if res, reason, _ := b.codes.verify("s", flowA, confClient, "111111", nil); res != codeOK || reason != "first" {
			t.Fatalf("the first client's code: %v %q", res, reason)
		}
		if res, _, _ := b.codes.verify("s", flowA, confClient, "111111", nil); res != codeNotFound {
			t.Fatalf("a code used twice: %v", res)
		}
		if _, err := b.codes.put("s", "333333", flowA, other, time.Minute, "", cl); err != nil {
			t.Fatal(err)
		}
		if res, _, _ := b.codes.verify("s", flowB, other, "222222", nil); res != codeNotFound {
			t.Fatalf("a client's replaced code: %v", res)
		}
		if res, _, _ := b.codes.verify("s", flowA, other, "333333", nil); res != codeOK {
			t.Fatalf("the replacing code: %v", res)
		}
	})
}

func TestConformanceACodeIsBoundToItsCredentialFlowAndClient(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backends) {
		b.codes.put("s", "123456", flowA, confClient, time.Minute, "", codeLimits{})
		for name, c := range map[string]struct {
			scope, flow string
			client      netip.Addr
		}{
			"another step-1 cookie": {"s", flowB, confClient},
			"another client":        {"s", flowA, netip.MustParseAddr("192.0.2.2")},
			"another credential":    {"t", flowA, confClient},
		} {
			if res, _, _ := b.codes.verify(c.scope, c.flow, c.client, "123456", nil); res != codeNotFound {
				t.Fatalf("%s: %v, want codeNotFound", name, res)
			}
		}
		if res, _, _ := b.codes.verify("s", flowA, confClient, "123456", nil); res != codeOK {
			t.Fatalf("the attempts from elsewhere spent the code: %v", res)
		}
	})
}

func TestConformanceACodeEndsAtItsExpiry(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backends) {
		b.codes.put("s", "123456", flowA, confClient, 10*time.Minute, "", codeLimits{})
		b.clk.Advance(10*time.Minute - time.Second)
		if _, ok := b.codes.pending("s", flowA, confClient); !ok {
			t.Fatal("code not pending before its expiry")
		}
		b.clk.Advance(time.Second)
		if _, ok := b.codes.pending("s", flowA, confClient); ok {
			t.Fatal("code still pending at its expiry")
		}
		if res, _, _ := b.codes.verify("s", flowA, confClient, "123456", nil); res != codeNotFound {
			t.Fatalf("expired code: %v, want codeNotFound", res)
		}
	})
}

func TestConformanceCodesPerCredentialAndWindow(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backends) {
		cl := codeLimits{perCredential: 3, window: 15 * time.Minute}
		for i := range 3 {
			c := netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)})
			if _, err := b.codes.put("s", "123456", flowA, c, time.Minute, "", cl); err != nil {
				t.Fatalf("code %d: %v", i+1, err)
			}
		}
		if _, err := b.codes.put("s", "123456", flowA, confClient, time.Minute, "", cl); !errors.Is(err, errCodeBudget) {
			t.Fatalf("fourth code in the window: %v, want errCodeBudget", err)
		}
		if _, err := b.codes.put("t", "123456", flowA, confClient, time.Minute, "", cl); err != nil {
			t.Fatalf("another credential was refused: %v", err)
		}
		b.clk.Advance(15 * time.Minute)
		if _, err := b.codes.put("s", "123456", flowA, confClient, time.Minute, "", cl); err != nil {
			t.Fatalf("after the window: %v", err)
		}
	})
}

func TestConformanceThreeWrongCodesVoidTheCode(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backends) {
		b.codes.put("s", "123456", flowA, confClient, time.Minute, "", codeLimits{})
		for i, want := range []codeResult{codeWrong, codeWrong, codeVoided} {
			if res, _, _ := b.codes.verify("s", flowA, confClient, "000000", nil); res != want {
				t.Fatalf("wrong code %d: %v, want %v", i+1, res, want)
			}
		}
		if res, _, _ := b.codes.verify("s", flowA, confClient, "123456", nil); res != codeNotFound {
			t.Fatalf("right code after 3 wrong ones: %v, want codeNotFound", res)
		}
	})
}

func TestConformanceCancelEndsItsFlowsCodeAndCancelAllEveryCode(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backends) {
		cl := codeLimits{perCredential: 10, window: time.Hour}
		other := netip.MustParseAddr("192.0.2.2")
		b.codes.put("s", "123456", flowA, confClient, time.Minute, "", cl)
		b.codes.put("s", "654321", flowB, other, time.Minute, "", cl)
		if err := b.codes.cancel("s", flowB); err != nil {
			t.Fatal(err)
		}
		_, pendingA := b.codes.pending("s", flowA, confClient)
		if _, pendingB := b.codes.pending("s", flowB, other); !pendingA || pendingB {
			t.Fatalf("after cancelling flow B: flow A's code pending %v, B's %v; want true, false", pendingA, pendingB)
		}
		b.codes.put("s", "654321", flowB, other, time.Minute, "", cl)
		if err := b.codes.cancelAll("s"); err != nil {
			t.Fatal(err)
		}
		if n, _ := b.codes.pendingFor("s"); n != 0 {
			t.Fatalf("%d codes pending after cancelAll", n)
		}
		if res, _, _ := b.codes.verify("s", flowA, confClient, "123456", nil); res != codeNotFound {
			t.Fatalf("a code after cancelAll: %v", res)
		}
	})
}
