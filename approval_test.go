// The approval request's rules, run against both backends (memory and
// Caddy's file storage) with the movable clock, and its approvers' tokens.

package breakglass

import (
	"errors"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

var approvalKey = []byte("approval test key")

// eachApprovalBackend runs fn against a fresh memory backend and a fresh
// storage backend.
func eachApprovalBackend(t *testing.T, fn func(t *testing.T, b approvalBackend, clk *testClock)) {
	t.Run("memory", func(t *testing.T) {
		fn(t, newApprovalStore(), useTestClock(t))
	})
	t.Run("storage", func(t *testing.T) {
		fn(t, &storageApprovals{st: &certmagic.FileStorage{Path: t.TempDir()}}, useTestClock(t))
	})
}

// putApproval stores a request of owner@x for approvers a@x and b@y, of 15
// minutes, resolving by onTimeout.
func putApproval(t *testing.T, b approvalBackend, onTimeout string) approvalRecord {
	t.Helper()
	rec := newApprovalRecord(newFlowID(), now(), 15*time.Minute, approvalRecord{
		Scope: "s", Account: "owner@x", Client: "192.0.2.1", Factor: "email", Reason: "incident 42", Host: "example.test",
		Approvers: []string{"a@x", "b@y"}, OnTimeout: onTimeout,
	})
	if err := b.put(rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

// pendingOf lists b's requests still waiting now.
func pendingOf(b approvalBackend) ([]approvalRecord, error) {
	recs, err := b.list()
	return pendingApprovals(recs, now()), err
}

// stateOf is the stored request's state now.
func stateOf(t *testing.T, b approvalBackend, id string) approvalState {
	t.Helper()
	rec, ok, err := b.get(id)
	if err != nil || !ok {
		t.Fatalf("get %s: %v, %v", id, ok, err)
	}
	return rec.state(now())
}

func TestApprovalApproveGrants(t *testing.T) {
	eachApprovalBackend(t, func(t *testing.T, b approvalBackend, clk *testClock) {
		rec := putApproval(t, b, onTimeoutDeny)
		if s := stateOf(t, b, rec.ID); s != approvalPending {
			t.Fatalf("a new request: %v", s)
		}
		clk.Advance(time.Minute)
		got, err := b.update(rec.ID, decision("A@x", true))
		if err != nil {
			t.Fatal(err)
		}
		if got.Decision != decisionApproved || got.DecidedBy != "a@x" || got.DecidedAt != clk.Now().UnixNano() || got.state(now()) != approvalGranted {
			t.Fatalf("after approval: %+v", got)
		}
		if s := stateOf(t, b, rec.ID); s != approvalGranted || !s.grants() {
			t.Fatalf("stored state after approval: %v", s)
		}
		// A decided request stays decided past its deadline.
		clk.Advance(time.Hour)
		if s := stateOf(t, b, rec.ID); s != approvalGranted {
			t.Fatalf("an approved request past its deadline: %v", s)
		}
	})
}

func TestApprovalRefuseRefuses(t *testing.T) {
	eachApprovalBackend(t, func(t *testing.T, b approvalBackend, clk *testClock) {
		rec := putApproval(t, b, onTimeoutGrant)
		if _, err := b.update(rec.ID, decision("b@y", false)); err != nil {
			t.Fatal(err)
		}
		// A refusal is not undone by on_timeout grant.
		clk.Advance(time.Hour)
		if s := stateOf(t, b, rec.ID); s != approvalRefused || s.grants() {
			t.Fatalf("a refused request past its grant deadline: %v", s)
		}
	})
}

func TestApprovalTimesOutByOnTimeout(t *testing.T) {
	for _, c := range []struct {
		onTimeout string
		want      approvalState
		grants    bool
	}{
		{onTimeoutGrant, approvalTimedOutGranted, true},
		{onTimeoutDeny, approvalTimedOutDenied, false},
	} {
		t.Run(c.onTimeout, func(t *testing.T) {
			eachApprovalBackend(t, func(t *testing.T, b approvalBackend, clk *testClock) {
				rec := putApproval(t, b, c.onTimeout)
				clk.Advance(15*time.Minute - time.Nanosecond)
				if s := stateOf(t, b, rec.ID); s != approvalPending {
					t.Fatalf("just before the deadline: %v", s)
				}
				if p, _ := pendingOf(b); len(p) != 1 || p[0].ID != rec.ID {
					t.Fatalf("pending before the deadline: %+v", p)
				}
				clk.Advance(time.Nanosecond)
				if s := stateOf(t, b, rec.ID); s != c.want || s.grants() != c.grants {
					t.Fatalf("at the deadline: %v (grants %v), want %v", s, s.grants(), c.want)
				}
				if p, _ := pendingOf(b); len(p) != 0 {
					t.Fatalf("a timed-out request still pending: %+v", p)
				}
				if _, err := b.update(rec.ID, decision("a@x", c.onTimeout == onTimeoutGrant)); !errors.Is(err, errPastDeadline) {
					t.Fatalf("a decision at the deadline: %v, want errPastDeadline", err)
				}
				if _, err := b.update(rec.ID, decision(approvalAdmin, true)); !errors.Is(err, errPastDeadline) {
					t.Fatalf("the admin's decision at the deadline: %v, want errPastDeadline", err)
				}
				if s := stateOf(t, b, rec.ID); s != c.want {
					t.Fatalf("a refused late decision changed the state: %v", s)
				}
			})
		})
	}
}

func TestApprovalDecisionIsFinal(t *testing.T) {
	eachApprovalBackend(t, func(t *testing.T, b approvalBackend, _ *testClock) {
		rec := putApproval(t, b, onTimeoutDeny)
		if _, err := b.update(rec.ID, decision("a@x", true)); err != nil {
			t.Fatal(err)
		}
		if _, err := b.update(rec.ID, decision("b@y", false)); !errors.Is(err, errAlreadyDecided) {
			t.Fatalf("another approver's refusal after an approval: %v, want errAlreadyDecided", err)
		}
		if _, err := b.update(rec.ID, decision(approvalAdmin, false)); !errors.Is(err, errAlreadyDecided) {
			t.Fatalf("the admin's refusal after an approval: %v, want errAlreadyDecided", err)
		}
		if got, _, _ := b.get(rec.ID); got.state(now()) != approvalGranted || got.DecidedBy != "a@x" {
			t.Fatalf("a second decision changed the first: %+v", got)
		}
		if p, _ := pendingOf(b); len(p) != 0 {
			t.Fatalf("a decided request still pending: %+v", p)
		}
	})
}

func TestApprovalTokenIsSingleUse(t *testing.T) {
	eachApprovalBackend(t, func(t *testing.T, b approvalBackend, _ *testClock) {
		rec := putApproval(t, b, onTimeoutDeny)
		if !validToken(approvalKey, rec.ID, "a@x", rec.Deadline, approvalToken(approvalKey, rec, "a@x")) {
			t.Fatal("the approver's own token refused")
		}
		if _, err := b.update(rec.ID, decision("a@x", false)); err != nil {
			t.Fatal(err)
		}
		got, _, _ := b.get(rec.ID)
		if len(got.Used) != 1 || got.Used[0] != "a@x" {
			t.Fatalf("used after a decision: %v", got.Used)
		}
		if _, err := b.update(rec.ID, decision("a@x", true)); !errors.Is(err, errTokenUsed) {
			t.Fatalf("the same approver's token again: %v, want errTokenUsed", err)
		}
		if got, _, _ := b.get(rec.ID); got.Decision != decisionRefused {
			t.Fatalf("a reused token changed the decision: %+v", got)
		}
	})
}

func TestApprovalTokenIsBoundToItsRequestApproverAndDeadline(t *testing.T) {
	eachApprovalBackend(t, func(t *testing.T, b approvalBackend, _ *testClock) {
		rec, other := putApproval(t, b, onTimeoutDeny), putApproval(t, b, onTimeoutDeny)
		tok := approvalToken(approvalKey, rec, "a@x")
		if !validToken(approvalKey, rec.ID, "A@X", rec.Deadline, tok) {
			t.Fatal("the token refused for its approver written in capitals")
		}
		for name, ok := range map[string]bool{
			"another request":       validToken(approvalKey, other.ID, "a@x", other.Deadline, tok),
			"another approver":      validToken(approvalKey, rec.ID, "b@y", rec.Deadline, tok),
			"another key":           validToken([]byte("other"), rec.ID, "a@x", rec.Deadline, tok),
			"a truncated token":     validToken(approvalKey, rec.ID, "a@x", rec.Deadline, tok[:len(tok)-1]),
			"the empty token":       validToken(approvalKey, rec.ID, "a@x", rec.Deadline, ""),
			"a moved deadline":      validToken(approvalKey, rec.ID, "a@x", rec.Deadline+int64(time.Hour), tok),
			"the other's own token": approvalToken(approvalKey, other, "a@x") == tok,
		} {
			if ok {
				t.Errorf("%s: accepted", name)
			}
		}
	})
}

func TestApprovalRefusesOwnAccountAndNonApprovers(t *testing.T) {
	eachApprovalBackend(t, func(t *testing.T, b approvalBackend, _ *testClock) {
		rec := newApprovalRecord(newFlowID(), now(), time.Minute, approvalRecord{Account: "a@x", Approvers: []string{"a@x", "b@y"}, OnTimeout: onTimeoutDeny})
		if err := b.put(rec); err != nil {
			t.Fatal(err)
		}
		if _, err := b.update(rec.ID, decision("A@X", true)); !errors.Is(err, errOwnAccount) {
			t.Fatalf("an approver deciding their own account's request: %v, want errOwnAccount", err)
		}
		if _, err := b.update(rec.ID, decision("c@z", true)); !errors.Is(err, errNotApprover) {
			t.Fatalf("a non-approver: %v, want errNotApprover", err)
		}
		if _, err := b.update("0123456789abcdef0123456789abcdef", decision("b@y", true)); !errors.Is(err, errApprovalNotFound) {
			t.Fatalf("an unknown request: %v, want errApprovalNotFound", err)
		}
		if _, err := b.update("../../key", decision("b@y", true)); !errors.Is(err, errApprovalNotFound) {
			t.Fatalf("a malformed ID: %v, want errApprovalNotFound", err)
		}
		if s := stateOf(t, b, rec.ID); s != approvalPending {
			t.Fatalf("refused decisions changed the request: %v", s)
		}
		got, _ := b.update(rec.ID, decision("b@y", true))
		if got.state(now()) != approvalGranted || len(got.Used) != 1 {
			t.Fatalf("the other approver after the refused ones: %+v", got)
		}
	})
}

func TestApprovalAdminDecidesAnyPendingRequest(t *testing.T) {
	eachApprovalBackend(t, func(t *testing.T, b approvalBackend, _ *testClock) {
		granted, refused := putApproval(t, b, onTimeoutDeny), putApproval(t, b, onTimeoutGrant)
		if got, err := b.update(granted.ID, decision(approvalAdmin, true)); err != nil || got.DecidedBy != approvalAdmin || got.state(now()) != approvalGranted || len(got.Used) != 0 {
			t.Fatalf("admin approval: %+v, %v", got, err)
		}
		if got, err := b.update(refused.ID, decision(approvalAdmin, false)); err != nil || got.DecidedBy != approvalAdmin || got.state(now()) != approvalRefused {
			t.Fatalf("admin refusal: %+v, %v", got, err)
		}
	})
}

func TestApprovalPendingAndSweep(t *testing.T) {
	eachApprovalBackend(t, func(t *testing.T, b approvalBackend, clk *testClock) {
		first := putApproval(t, b, onTimeoutDeny)
		clk.Advance(time.Minute)
		second := putApproval(t, b, onTimeoutDeny)
		p, err := pendingOf(b)
		if err != nil || len(p) != 2 || p[0].ID != first.ID || p[1].ID != second.ID || p[0].Reason != "incident 42" {
			t.Fatalf("pending: %+v, %v; want both, oldest first", p, err)
		}
		// The first is kept an hour past its deadline, then dropped.
		clk.Advance(14*time.Minute + approvalRetention - time.Nanosecond)
		if err := b.sweep(); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := b.get(first.ID); !ok {
			t.Fatal("swept before its retention ended")
		}
		clk.Advance(time.Nanosecond)
		if err := b.sweep(); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := b.get(first.ID); ok {
			t.Fatal("kept past its retention")
		}
		if _, ok, _ := b.get(second.ID); !ok {
			t.Fatal("the later request was swept with the first")
		}
		if _, err := b.update(first.ID, decision("a@x", true)); !errors.Is(err, errApprovalNotFound) {
			t.Fatalf("a decision of a swept request: %v", err)
		}
	})
}

func TestApprovalSurvivesARestartInStorageOnly(t *testing.T) {
	useTestClock(t)
	dir := t.TempDir()
	st := &storageApprovals{st: &certmagic.FileStorage{Path: dir}}
	rec := putApproval(t, st, onTimeoutDeny)
	if _, err := st.update(rec.ID, decision("a@x", true)); err != nil {
		t.Fatal(err)
	}
	again := &storageApprovals{st: &certmagic.FileStorage{Path: dir}}
	got, ok, err := again.get(rec.ID)
	if err != nil || !ok || got.state(now()) != approvalGranted || got.Account != "owner@x" || got.Factor != "email" || len(got.Used) != 1 {
		t.Fatalf("after a restart: %+v, %v, %v", got, ok, err)
	}
	if _, err := again.update(rec.ID, decision("a@x", true)); !errors.Is(err, errTokenUsed) {
		t.Fatalf("a used token after a restart: %v, want errTokenUsed", err)
	}

	mem := newApprovalStore()
	rec = putApproval(t, mem, onTimeoutDeny)
	if _, ok, _ := newApprovalStore().get(rec.ID); ok {
		t.Fatal("a new memory backend found the old one's request")
	}
	if _, ok, _ := mem.get(rec.ID); !ok {
		t.Fatal("the memory backend lost its own request")
	}
}

// A granted request issues its session once, whichever instance asks; a
// pending, refused or timed-out-denied one issues none.
func TestApprovalGrantedRequestIsClaimedOnce(t *testing.T) {
	claim := func(r *approvalRecord, t time.Time) error { return r.claim(t) }
	eachApprovalBackend(t, func(t *testing.T, b approvalBackend, clk *testClock) {
		approved, vetoWindow, refused, denied := putApproval(t, b, onTimeoutDeny), putApproval(t, b, onTimeoutGrant),
			putApproval(t, b, onTimeoutGrant), putApproval(t, b, onTimeoutDeny)
		for _, id := range []string{approved.ID, vetoWindow.ID, denied.ID} {
			if _, err := b.update(id, claim); !errors.Is(err, errNotGranted) {
				t.Fatalf("a pending request claimed: %v, want errNotGranted", err)
			}
		}
		if _, err := b.update(approved.ID, decision("a@x", true)); err != nil {
			t.Fatal(err)
		}
		if _, err := b.update(refused.ID, decision("a@x", false)); err != nil {
			t.Fatal(err)
		}
		if got, err := b.update(approved.ID, claim); err != nil || !got.Claimed {
			t.Fatalf("the approved request's claim: %+v, %v", got, err)
		}
		if _, err := b.update(approved.ID, claim); !errors.Is(err, errClaimed) {
			t.Fatalf("a second claim: %v, want errClaimed", err)
		}
		clk.Advance(15 * time.Minute)
		if _, err := b.update(vetoWindow.ID, claim); err != nil {
			t.Fatalf("the veto window's claim at its deadline: %v", err)
		}
		for _, id := range []string{refused.ID, denied.ID} {
			if _, err := b.update(id, claim); !errors.Is(err, errNotGranted) {
				t.Fatalf("a refused or denied request claimed: %v, want errNotGranted", err)
			}
		}
	})
}

// A timeout is recorded once, and only when there was one.
func TestApprovalTimeoutIsNotedOnce(t *testing.T) {
	note := func(r *approvalRecord, t time.Time) error { return r.noteTimeout(t) }
	eachApprovalBackend(t, func(t *testing.T, b approvalBackend, clk *testClock) {
		timedOut, decided := putApproval(t, b, onTimeoutDeny), putApproval(t, b, onTimeoutDeny)
		if _, err := b.update(timedOut.ID, note); !errors.Is(err, errNotTimedOut) {
			t.Fatalf("a pending request's timeout noted: %v", err)
		}
		if _, err := b.update(decided.ID, decision(approvalDoor, false)); err != nil {
			t.Fatalf("the door's refusal: %v", err)
		}
		clk.Advance(15 * time.Minute)
		if got, err := b.update(timedOut.ID, note); err != nil || !got.TimeoutNoted || got.state(now()) != approvalTimedOutDenied {
			t.Fatalf("the timeout: %+v, %v", got, err)
		}
		if _, err := b.update(timedOut.ID, note); !errors.Is(err, errNotTimedOut) {
			t.Fatalf("the timeout noted twice: %v", err)
		}
		if _, err := b.update(decided.ID, note); !errors.Is(err, errNotTimedOut) {
			t.Fatalf("a decided request's timeout noted: %v", err)
		}
	})
}
