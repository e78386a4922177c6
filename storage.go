// Cluster mode ("state storage"): the limiter and the pending codes kept in
// Caddy's configured storage, so that every Caddy instance sharing that
// storage shares them. These backends only load, store and lock; the rules
// are the records' (ratelimit.go, otp.go).

package breakglass

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"path"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
)

const (
	epochsDir      = "break_glass/epochs"
	storagePrefix  = "break_glass/"
	storageKeyPath = storagePrefix + "key"
	clientsDir     = storagePrefix + "clients"
	codesDir       = storagePrefix + "codes"
	revokedDir     = storagePrefix + "revoked"
	sweepLock      = storagePrefix + "sweep"
	sweptAtPath    = storagePrefix + "swept_at"
)

var (
	// storageTimeout bounds one storage operation.
	storageTimeout = 10 * time.Second
	// attemptLockWait is how long an attempt waits while another instance
	// checks an attempt of the same client; then it gets 429.
	attemptLockWait = 3 * time.Second
	// defaultRefreshInterval is how often an instance reloads revocations.
	defaultRefreshInterval = 5 * time.Second
)

func opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), storageTimeout)
}

// unlock releases a storage lock, retrying for a while: a lock left behind
// would refuse a client (or a credential's codes) on every instance.
func unlock(st certmagic.Storage, name string) error {
	var err error
	for i := range 5 {
		ctx, cancel := opCtx()
		err = st.Unlock(ctx, name)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(time.Duration(i+1) * 100 * time.Millisecond)
	}
	return fmt.Errorf("releasing storage lock %s: %w", name, err)
}

func notExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// lockProbeWait is how long the lock check waits for a second Lock of a
// name already locked to block.
var lockProbeWait = 300 * time.Millisecond

// checkLockExcludes refuses a storage whose Lock does not exclude (some
// storage modules implement it as a no-op): it takes a lock, then tries to
// take it again. Cluster mode's "a code works once" and "no failure lost"
// rest on that exclusion.
func checkLockExcludes(st certmagic.Storage) error {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	name := storagePrefix + "lock_check_" + hex.EncodeToString(b[:])
	ctx, cancel := opCtx()
	defer cancel()
	if err := st.Lock(ctx, name); err != nil {
		return fmt.Errorf("taking a storage lock: %v", err)
	}
	defer func() { _ = unlock(st, name) }()
	pctx, pcancel := context.WithTimeout(ctx, lockProbeWait)
	defer pcancel()
	if err := st.Lock(pctx, name); err == nil {
		return fmt.Errorf("the storage (%T) let a lock be taken twice: its Lock does not exclude, so codes could be used twice and failures lost; use a storage whose Lock excludes (Caddy's file_system does)", st)
	}
	return nil
}

// storageLimiter keeps each client's failures in storage. An attempt holds
// the client's storage lock from reserve to settle, so attempts of one client
// are checked one at a time across the cluster and each failure is recorded
// atomically.
type storageLimiter struct {
	st certmagic.Storage
}

func clientPath(key netip.Addr) string {
	return clientsDir + "/" + strings.NewReplacer(":", "-", ".", "_").Replace(key.String())
}

func (l *storageLimiter) load(ctx context.Context, key netip.Addr) (clientRecord, error) {
	var rec clientRecord
	b, err := l.st.Load(ctx, clientPath(key))
	if notExist(err) {
		return rec, nil
	}
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("%s: %v", clientPath(key), err)
	}
	return rec, nil
}

func (l *storageLimiter) lockedUntil(key netip.Addr) (time.Time, bool, error) {
	ctx, cancel := opCtx()
	defer cancel()
	rec, err := l.load(ctx, key)
	if err != nil {
		return time.Time{}, false, err
	}
	until, locked := rec.locked(now())
	return until, locked, nil
}

func (l *storageLimiter) remaining(key netip.Addr, lim limits) int {
	ctx, cancel := opCtx()
	defer cancel()
	rec, err := l.load(ctx, key)
	if err != nil {
		return lim.maxAttempts
	}
	return rec.remaining(now(), lim)
}

// reserve takes the client's storage lock and keeps it until settle, so
// that nothing is ever in flight in the stored record.
func (l *storageLimiter) reserve(key netip.Addr, kind attemptKind, lim limits) (claim, error) {
	lctx, cancel := context.WithTimeout(context.Background(), attemptLockWait)
	defer cancel()
	name := clientPath(key)
	if err := l.st.Lock(lctx, name); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return claim{res: refusedInFlight}, nil
		}
		return claim{}, err
	}
	ctx, cancel2 := opCtx()
	defer cancel2()
	rec, err := l.load(ctx, key)
	if err != nil {
		return claim{}, errors.Join(err, unlock(l.st, name))
	}
	res, until := rec.reserve(now(), kind, lim)
	c := claim{res: res, until: until, failures: rec.Failures}
	if res != reserved {
		return c, unlock(l.st, name)
	}
	return c, nil // the lock is held until settle
}

func (l *storageLimiter) settle(key netip.Addr, kind attemptKind, o charge, lim limits) (rem int, until time.Time, err error) {
	ctx, cancel := opCtx()
	defer cancel()
	name := clientPath(key)
	defer func() { err = errors.Join(err, unlock(l.st, name)) }()
	if o == chargeNone {
		return lim.maxAttempts, time.Time{}, nil
	}
	rec, err := l.load(ctx, key)
	if err != nil {
		return 0, time.Time{}, err
	}
	rem, until = rec.settle(now(), kind, o, lim)
	b, _ := json.Marshal(rec)
	if err := l.st.Store(ctx, name, b); err != nil {
		return 0, time.Time{}, err
	}
	return rem, until, nil
}

func (l *storageLimiter) locked() ([]lockedClient, error) {
	ctx, cancel := opCtx()
	defer cancel()
	keys, err := l.st.List(ctx, clientsDir, false)
	if notExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	t := now()
	var out []lockedClient
	for _, k := range keys {
		b, err := l.st.Load(ctx, k)
		if err != nil {
			continue
		}
		var rec clientRecord
		if json.Unmarshal(b, &rec) != nil {
			continue
		}
		if until, ok := rec.locked(t); ok {
			name := strings.NewReplacer("-", ":", "_", ".").Replace(path.Base(k))
			out = append(out, lockedClient{Client: name, Failures: rec.Failures, LockedUntil: until})
		}
	}
	return out, nil
}

func (l *storageLimiter) unlock(key netip.Addr) (bool, error) {
	ctx, cancel := opCtx()
	defer cancel()
	if err := l.st.Lock(ctx, clientPath(key)); err != nil {
		return false, err
	}
	defer func() { _ = unlock(l.st, clientPath(key)) }()
	rec, err := l.load(ctx, key)
	if err != nil {
		return false, err
	}
	if rec.WindowEnd == 0 || rec.expired(now()) {
		return false, nil
	}
	return true, l.st.Delete(ctx, clientPath(key))
}

// setMaxClients does nothing: in storage, expired records are swept and the
// storage itself is the bound.
func (l *storageLimiter) setMaxClients(int) {}

// sweep does nothing here: the state's storage sweeper does it, once for the
// cluster.
func (l *storageLimiter) sweep() int { return 0 }

// storageCodes keeps each credential's pending code in storage, as a keyed
// hash of the code (never the code), and checks it under the storage lock so
// that a code works once even when two instances check it at once.
type storageCodes struct {
	st  certmagic.Storage
	key []byte
}

func codePath(scope string) string { return codesDir + "/" + scope }

func (s *storageCodes) load(ctx context.Context, scope string) (*codeRecord, error) {
	rec := &codeRecord{}
	b, err := s.st.Load(ctx, codePath(scope))
	if notExist(err) {
		return rec, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, rec); err != nil {
		return nil, fmt.Errorf("%s: %v", codePath(scope), err)
	}
	return rec, nil
}

// save stores rec, or deletes it when nothing in it matters any more.
func (s *storageCodes) save(ctx context.Context, scope string, rec *codeRecord, t time.Time) error {
	if rec.empty(t) {
		if err := s.st.Delete(ctx, codePath(scope)); err != nil && !notExist(err) {
			return err
		}
		return nil
	}
	b, _ := json.Marshal(rec)
	return s.st.Store(ctx, codePath(scope), b)
}

// change runs fn on the credential's record holding its storage lock, and
// stores the record when fn says it changed.
func (s *storageCodes) change(scope string, fn func(ctx context.Context, rec *codeRecord, t time.Time) (bool, error)) (err error) {
	ctx, cancel := opCtx()
	defer cancel()
	if err := s.st.Lock(ctx, codePath(scope)); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, unlock(s.st, codePath(scope))) }()
	rec, err := s.load(ctx, scope)
	if err != nil {
		return err
	}
	t := now()
	changed, err := fn(ctx, rec, t)
	if err != nil || !changed {
		return err
	}
	return s.save(ctx, scope, rec, t)
}

func (s *storageCodes) put(scope, code, flow string, client netip.Addr, ttl time.Duration, reason string, lim codeLimits) (time.Time, error) {
	var exp time.Time
	err := s.change(scope, func(_ context.Context, rec *codeRecord, t time.Time) (bool, error) {
		exp = t.Add(ttl)
		if !rec.issue(t, newPending(s.key, scope, code, flow, client, exp, reason), lim) {
			return false, errCodeBudget
		}
		return true, nil
	})
	return exp, err
}

func (s *storageCodes) pending(scope, flow string, client netip.Addr) (time.Time, bool) {
	ctx, cancel := opCtx()
	defer cancel()
	rec, err := s.load(ctx, scope)
	if err != nil {
		return time.Time{}, false
	}
	if i := rec.find(now(), flow, client); i >= 0 {
		return time.Unix(0, rec.Pending[i].Expires), true
	}
	return time.Time{}, false
}

func (s *storageCodes) verify(scope, flow string, client netip.Addr, code string, alt altCheck) (codeResult, string, error) {
	mac := codeMAC(s.key, scope, code)
	res, reason := codeNotFound, ""
	err := s.change(scope, func(ctx context.Context, rec *codeRecord, t time.Time) (changed bool, err error) {
		res, reason, changed, err = rec.check(ctx, t, flow, client, mac, code, alt)
		return changed, err
	})
	if err != nil {
		return codeNotFound, "", err
	}
	return res, reason, nil
}

func (s *storageCodes) cancel(scope, flow string) error {
	return s.change(scope, func(_ context.Context, rec *codeRecord, _ time.Time) (bool, error) {
		return rec.cancel(flow), nil
	})
}

func (s *storageCodes) cancelAll(scope string) error {
	return s.change(scope, func(_ context.Context, rec *codeRecord, _ time.Time) (bool, error) {
		changed := len(rec.Pending) > 0
		rec.Pending = nil
		return changed, nil
	})
}

func (s *storageCodes) pendingFor(scope string) (int, time.Time) {
	ctx, cancel := opCtx()
	defer cancel()
	rec, err := s.load(ctx, scope)
	if err != nil {
		return 0, time.Time{}
	}
	return rec.live(now())
}

func (s *storageCodes) sweep() int { return 0 }
