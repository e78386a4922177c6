// Tests of the storage-backed state against Caddy's file_system storage in a
// temporary folder: two state objects on one folder stand for two Caddy
// instances of a cluster.

package breakglass

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// newStorageTestState makes a storage state on st, destroyed at the end.
func newStorageTestState(t *testing.T, st certmagic.Storage) *state {
	t.Helper()
	d, err := newStorageState(st, zap.NewNop(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s := d.(*state)
	t.Cleanup(func() { _ = s.Destruct() })
	return s
}

func TestStorageStatesOnOneFolderShareLockoutsCodesKeysAndLogouts(t *testing.T) {
	st := &certmagic.FileStorage{Path: t.TempDir()}
	a, b := newStorageTestState(t, st), newStorageTestState(t, st)
	k := netip.MustParseAddr("192.0.2.1")

	// A lockout earned on a holds on b.
	for range 3 {
		if res, _, _ := tryAttemptFrom(t, a.limiter, k, attemptCode, chargeFailed, lim(3, time.Hour)); res != reserved {
			t.Fatalf("reserve on a: %v", res)
		}
	}
	if _, locked, err := b.limiter.lockedUntil(k); err != nil || !locked {
		t.Fatalf("b does not see the lockout made on a: %v %v", locked, err)
	}
	if res, _ := reserveRes(b.limiter, k, 3, time.Hour); res != refusedLocked {
		t.Fatalf("b let a locked client try: %v", res)
	}

	// A code issued on a works on b, once.
	if _, err := a.codes.put("scope", "123456", flowA, clientA, time.Minute, "", codeLimits{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.codes.pending("scope", flowA, clientA); !ok {
		t.Fatal("b does not see the code pending on a")
	}
	if res, _, err := b.codes.verify("scope", flowA, clientA, "123456", nil); err != nil || res != codeOK {
		t.Fatalf("the code on b: %v %v", res, err)
	}
	if res, _, _ := a.codes.verify("scope", flowA, clientA, "123456", nil); res != codeNotFound {
		t.Fatalf("the code worked twice: %v", res)
	}

	// One signing key: a session made on a is good on b; a logout on b ends
	// it on a after a refresh.
	sess := session{ID: "0123456789abcdef0123456789abcdef", Issued: now(), Expires: now().Add(time.Hour), Client: clientA, Scope: a.scopeOf("ops@example.com", []byte("h"))}
	cookie := a.sessions.encode(sess)
	if _, err := b.sessions.verify(cookie, clientA, b.scopeOf("ops@example.com", []byte("h"))); err != nil {
		t.Fatalf("b rejects a's session: %v", err)
	}
	if err := b.revoke(sess); err != nil {
		t.Fatal(err)
	}
	if err := refreshRevocations(context.Background(), st, a.sessions); err != nil {
		t.Fatal(err)
	}
	if _, err := a.sessions.verify(cookie, clientA, sess.Scope); !errors.Is(err, errSessionRevoked) {
		t.Fatalf("a still accepts the session logged out on b: %v", err)
	}
}

func TestStorageStateSurvivesARestartOfEveryInstance(t *testing.T) {
	dir := t.TempDir()
	first := newStorageTestState(t, &certmagic.FileStorage{Path: dir})
	k := netip.MustParseAddr("192.0.2.7")
	tryAttemptFrom(t, first.limiter, k, attemptCode, chargeFailed, lim(1, time.Hour))
	sess := session{ID: "fedcba9876543210fedcba9876543210", Issued: now(), Expires: now().Add(time.Hour), Client: clientA, Scope: "s"}
	cookie := first.sessions.encode(sess)
	_ = first.Destruct()

	again := newStorageTestState(t, &certmagic.FileStorage{Path: dir})
	if _, locked, _ := again.limiter.lockedUntil(k); !locked {
		t.Fatal("the lockout was lost in the restart")
	}
	if _, err := again.sessions.verify(cookie, clientA, "s"); err != nil {
		t.Fatalf("the session was lost in the restart: %v", err)
	}
}

func TestStorageRaceLosesNoFailureAndUsesNoCodeTwice(t *testing.T) {
	override(t, &attemptLockWait, time.Minute) // wait for the other instance, never refuse
	st := &certmagic.FileStorage{Path: t.TempDir()}
	insts := []*state{newStorageTestState(t, st), newStorageTestState(t, st)}
	k := netip.MustParseAddr("192.0.2.9")

	const perWorker, workers = 2, 3
	var wg sync.WaitGroup
	for _, s := range insts {
		for range workers {
			wg.Go(func() {
				for range perWorker {
					if res, err := reserveRes(s.limiter, k, 1000, time.Hour); err != nil || res != reserved {
						t.Errorf("reserve: %v %v", res, err)
						return
					}
					if _, _, err := s.limiter.settle(k, attemptCode, chargeFailed, lim(1000, time.Hour)); err != nil {
						t.Error(err)
					}
				}
			})
		}
	}
	wg.Wait()
	want := 1000 - len(insts)*workers*perWorker
	if rem := insts[0].limiter.remaining(k, lim(1000, 0)); rem != want {
		t.Fatalf("%d attempts left after %d failures of 1000: failures were lost", rem, 1000-want)
	}

	// The right code, sent to both instances at once, signs in once.
	if _, err := insts[0].codes.put("scope", "424242", flowA, clientA, time.Minute, "", codeLimits{}); err != nil {
		t.Fatal(err)
	}
	var ok atomic.Int32
	for _, s := range insts {
		for range 2 {
			wg.Go(func() {
				if res, _, err := s.codes.verify("scope", flowA, clientA, "424242", nil); err == nil && res == codeOK {
					ok.Add(1)
				}
			})
		}
	}
	wg.Wait()
	if ok.Load() != 1 {
		t.Fatalf("the code signed in %d times", ok.Load())
	}
}

func TestStorageKeepsNoCode(t *testing.T) {
	st := &certmagic.FileStorage{Path: t.TempDir()}
	s := newStorageTestState(t, st)
	if _, err := s.codes.put("scope", "987654", flowA, clientA, time.Minute, "", codeLimits{}); err != nil {
		t.Fatal(err)
	}
	b, err := st.Load(context.Background(), codePath("scope"))
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 || strings.Contains(string(b), "987654") {
		t.Fatalf("the stored record holds the code: %s", b)
	}
}

// flakyStorage is file storage that can be made to fail, as a storage
// backend that went down.
type flakyStorage struct {
	*certmagic.FileStorage
	down atomic.Bool
}

var errStorageDown = errors.New("storage is down")

func (f *flakyStorage) Lock(ctx context.Context, name string) error {
	if f.down.Load() {
		return errStorageDown
	}
	return f.FileStorage.Lock(ctx, name)
}

func (f *flakyStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if f.down.Load() {
		return nil, errStorageDown
	}
	return f.FileStorage.Load(ctx, key)
}

func (f *flakyStorage) Store(ctx context.Context, key string, v []byte) error {
	if f.down.Load() {
		return errStorageDown
	}
	return f.FileStorage.Store(ctx, key, v)
}

func (f *flakyStorage) List(ctx context.Context, p string, r bool) ([]string, error) {
	if f.down.Load() {
		return nil, errStorageDown
	}
	return f.FileStorage.List(ctx, p, r)
}

func TestStorageDownFailsSignInsClosedAndKeepsSessions(t *testing.T) {
	st := &flakyStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	app := &App{State: "storage", MaxAttempts: 3}
	if err := app.setup(zap.NewNop(), st); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Cleanup() })
	h := newTestHandler(t, app, nil)
	op := h.client(t, "192.0.2.1")
	if r := h.signInAt(t, op); r.Status != http.StatusSeeOther {
		t.Fatalf("sign-in with storage up: %d", r.Status)
	}
	other := h.client(t, "192.0.2.2")
	form := bgtest.LoginForm(other.Get("/admin/").CSRF(t), "ops@example.com", "wrong", "")

	st.down.Store(true)
	if r := other.Do("POST", "/admin/", form, nil); r.Status != http.StatusServiceUnavailable {
		t.Fatalf("a sign-in with storage down: %d, want 503", r.Status)
	}
	if h.logs.Logs().Find("break-glass state unavailable: sign-in refused", nil) == nil {
		t.Fatal("no ERROR for the storage failure")
	}
	if r := op.Get("/admin/"); r.Header.Get("X-Upstream") != "reached" {
		t.Fatalf("the open session stopped working with storage down: %d", r.Status)
	}

	st.down.Store(false)
	if rem := h.state.limiter.remaining(limiterKey(netip.MustParseAddr("192.0.2.2")), lim(3, 0)); rem != 3 {
		t.Fatalf("the refused attempt was counted: %d left", rem)
	}
}

func TestStorageSweepDropsOnlyExpiredRecordsAndSkipsOnesInUse(t *testing.T) {
	clk := useTestClock(t)
	st := &certmagic.FileStorage{Path: t.TempDir()}
	s := newStorageTestState(t, st)
	old, busy, live := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	for _, k := range []netip.Addr{old, busy} {
		tryAttemptFrom(t, s.limiter, k, attemptCode, chargeFailed, lim(5, time.Minute))
	}
	clk.Advance(2 * time.Minute) // both records have expired
	tryAttemptFrom(t, s.limiter, live, attemptCode, chargeFailed, lim(5, time.Minute))

	ctx := context.Background()
	if err := st.Lock(ctx, clientPath(busy)); err != nil { // another instance is at it
		t.Fatal(err)
	}
	if err := sweepStorage(ctx, st, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	_ = st.Unlock(ctx, clientPath(busy))
	if st.Exists(ctx, clientPath(old)) {
		t.Error("an expired record was kept")
	}
	if !st.Exists(ctx, clientPath(busy)) {
		t.Error("a record under another instance's lock was deleted")
	}
	if rem := s.limiter.remaining(live, lim(5, 0)); rem != 4 {
		t.Errorf("the sweep lost a live failure: %d left", rem)
	}
}

// An admin revoke on one instance reaches the others at their refresh, even
// when no single logout was ever written to storage.
func TestStorageRevokeAllReachesOtherInstancesWithoutAnyLogout(t *testing.T) {
	st := &certmagic.FileStorage{Path: t.TempDir()}
	a, b := newStorageTestState(t, st), newStorageTestState(t, st)
	id, _ := newSessionID()
	s := session{ID: id, Issued: now().Add(-time.Second), Expires: now().Add(time.Hour), Client: clientA, Scope: "scope"}
	v := a.sessions.encode(s)
	if _, err := b.sessions.verify(v, clientA, "scope"); err != nil {
		t.Fatalf("before the revoke, on b: %v", err)
	}
	if _, err := a.endSessions("scope"); err != nil {
		t.Fatal(err)
	}
	if err := refreshRevocations(context.Background(), st, b.sessions); err != nil {
		t.Fatal(err)
	}
	if _, err := b.sessions.verify(v, clientA, "scope"); !errors.Is(err, errSessionRevoked) {
		t.Fatalf("after the revoke on a and a refresh, on b: %v, want errSessionRevoked", err)
	}
}

// noLockStorage is a storage whose Lock is a no-op, as some storage modules'
// are.
type noLockStorage struct{ certmagic.Storage }

func (noLockStorage) Lock(context.Context, string) error   { return nil }
func (noLockStorage) Unlock(context.Context, string) error { return nil }

// Finding 9 of the second review: cluster mode needs a Lock that excludes.
func TestStateStorageRefusesAStorageWhoseLockDoesNotExclude(t *testing.T) {
	_, err := newStorageState(noLockStorage{&certmagic.FileStorage{Path: t.TempDir()}}, zap.NewNop(), time.Hour)
	if err == nil || !strings.Contains(err.Error(), "Lock does not exclude") {
		t.Fatalf("a storage with a no-op Lock: %v, want it refused", err)
	}
	app := &App{State: "storage"}
	if err := app.setup(zap.NewNop(), noLockStorage{&certmagic.FileStorage{Path: t.TempDir()}}); err == nil {
		_ = app.Cleanup()
		t.Fatal("the app took state storage on a storage whose Lock does not exclude")
	}
	newStorageTestState(t, &certmagic.FileStorage{Path: t.TempDir()}) // file_system passes
}
