// Tests of session cookies: signing, binding, expiry and revocation.

package breakglass

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

func newTestSession(t *testing.T, st *sessions, client netip.Addr) (session, string) {
	t.Helper()
	id, err := newSessionID()
	if err != nil {
		t.Fatal(err)
	}
	s := session{ID: id, Issued: now(), Expires: now().Add(time.Hour), Client: client, Scope: "ops@example.com"}
	return s, st.encode(s)
}

// A cookie verifies as the session it was issued for; any changed byte, or
// a malformed value, is rejected.
func TestSessionCookieVerifiesOnlyAsIssued(t *testing.T) {
	useTestClock(t)
	st := newSessions([]byte("0123456789abcdef0123456789abcdef"))
	s, v := newTestSession(t, st, clientA)
	got, err := st.verify(v, clientA, "ops@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != s.ID || !got.Issued.Equal(s.Issued) || !got.Expires.Equal(s.Expires) || got.Client != clientA {
		t.Fatalf("decoded %+v, want %+v", got, s)
	}
	// Every other character at every position, so that characters differing
	// only in base64's unused padding bits are tried too.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
	for i := range len(v) {
		for _, c := range []byte(alphabet) {
			if c == v[i] {
				continue
			}
			b := []byte(v)
			b[i] = c
			if _, err := st.verify(string(b), clientA, "ops@example.com"); err == nil {
				t.Fatalf("cookie with byte %d changed to %q was accepted", i, c)
			}
		}
	}
	for _, v := range []string{"", ".", "abc", "abc.def", "!!!.???", string(make([]byte, 2000))} {
		if _, err := st.verify(v, clientA, "ops@example.com"); err == nil {
			t.Errorf("%q accepted", v)
		}
	}
}

func TestSessionIsRejected(t *testing.T) {
	for name, c := range map[string]struct {
		otherKey bool          // signed with another key: another app instance's
		age      time.Duration // at the check
		client   netip.Addr
		scope    string
		want     error
	}{
		"signed with another key": {true, 0, clientA, "ops@example.com", errSessionSignature},
		"expired":                 {false, time.Hour, clientA, "ops@example.com", errSessionExpired},
		"from another client":     {false, 0, clientB, "ops@example.com", errSessionClient},
		"for another credential":  {false, 0, clientA, "other@example.com", errSessionScope},
	} {
		t.Run(name, func(t *testing.T) {
			clk := useTestClock(t)
			st, signer := newSessions([]byte("k")), newSessions([]byte("k"))
			if c.otherKey {
				signer = newSessions([]byte("another key, another app instance"))
			}
			_, v := newTestSession(t, signer, clientA)
			clk.Advance(c.age)
			if _, err := st.verify(v, c.client, c.scope); !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
}

func TestSessionReplayedAfterLogoutIsRejected(t *testing.T) {
	clk := useTestClock(t)
	st := newSessions([]byte("k"))
	s, v := newTestSession(t, st, clientA)
	st.revoke(s)
	if _, err := st.verify(v, clientA, "ops@example.com"); !errors.Is(err, errSessionRevoked) {
		t.Fatalf("err = %v, want errSessionRevoked", err)
	}
	if n := st.sweep(); n != 1 {
		t.Fatalf("the revocation of a live session was swept (%d left)", n)
	}
	clk.Advance(time.Hour)
	if n := st.sweep(); n != 0 {
		t.Fatalf("the revocation of an expired session was kept (%d left)", n)
	}
}

func TestSessionRevokeAllEndsSessionsIssuedUpToItOnly(t *testing.T) {
	clk := useTestClock(t)
	st := newSessions([]byte("k"))
	_, before := newTestSession(t, st, clientA)
	clk.Advance(300 * time.Millisecond)
	st.endAll("ops@example.com", now())
	_, at := newTestSession(t, st, clientA)
	clk.Advance(time.Millisecond) // within the same second as the revoke
	_, after := newTestSession(t, st, clientA)
	for name, v := range map[string]string{"before": before, "at": at} {
		if _, err := st.verify(v, clientA, "ops@example.com"); !errors.Is(err, errSessionRevoked) {
			t.Fatalf("session issued %s the revoke: err = %v, want errSessionRevoked", name, err)
		}
	}
	if _, err := st.verify(after, clientA, "ops@example.com"); err != nil {
		t.Fatalf("session issued 1ms after the revoke: %v", err)
	}
}

func TestIssuedNotAfterComparesOldCookiesByTheirWholeSecond(t *testing.T) {
	nb := "2026-11-25T12:00:05.300Z"
	for issued, want := range map[string]bool{
		"2026-11-25T12:00:05.299Z": true,
		"2026-11-25T12:00:05.300Z": true,
		"2026-11-25T12:00:05.301Z": false,
		"2026-11-25T12:00:04Z":     true, // an old cookie, from the second before
		"2026-11-25T12:00:05Z":     true, // from the revoke's second: ended
		"2026-11-25T12:00:06Z":     false,
	} {
		if got := issuedNotAfter(issued, nb); got != want {
			t.Errorf("issuedNotAfter(%s, %s) = %v, want %v", issued, nb, got, want)
		}
	}
}
