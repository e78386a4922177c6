package breakglass

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

// The signed-in path caches a checked signature; everything else about the
// session is checked at every request, cached or not.
func TestACachedSignatureStillChecksExpiryClientRevocationAndEveryByte(t *testing.T) {
	clk := useTestClock(t)
	st := newSessions([]byte("0123456789abcdef0123456789abcdef"))
	client, other := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	s, value := newTestSession(t, st, client)
	if _, _, _, err := st.check(value, client, s.Scope); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.signed[value]; !ok {
		t.Fatal("a checked cookie was not cached: this test would prove nothing")
	}
	for _, tc := range []struct {
		name   string
		value  string
		client netip.Addr
		scope  string
		want   error
	}{
		{"another client", value, other, s.Scope, errSessionClient},
		{"another credential", value, client, "other", errSessionScope},
		{"one byte changed", value[:len(value)-1] + string(value[len(value)-1]^1), client, s.Scope, errSessionSignature},
	} {
		if _, _, _, err := st.check(tc.value, tc.client, tc.scope); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	st.revoke(s)
	if _, _, _, err := st.check(value, client, s.Scope); !errors.Is(err, errSessionRevoked) {
		t.Errorf("revoked: %v", err)
	}
	s2, value2 := newTestSession(t, st, client)
	if _, _, _, err := st.check(value2, client, s2.Scope); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Hour)
	if _, _, _, err := st.check(value2, client, s2.Scope); !errors.Is(err, errSessionExpired) {
		t.Errorf("expired: %v", err)
	}
}

func TestTheSignatureCacheIsBounded(t *testing.T) {
	useTestClock(t)
	st := newSessions([]byte("0123456789abcdef0123456789abcdef"))
	client := netip.MustParseAddr("192.0.2.1")
	for range maxSigned + 10 {
		s, v := newTestSession(t, st, client)
		if _, _, _, err := st.check(v, client, s.Scope); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(st.signed); n > maxSigned {
		t.Fatalf("%d signatures cached, more than %d", n, maxSigned)
	}
}
