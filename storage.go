// Cluster mode ("state storage"): the limiter, the pending codes, the signing
// key and the revocations kept in Caddy's configured storage, so that every
// Caddy instance sharing that storage shares them.

package breakglass

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
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

// loadOrCreateRootKey returns the cluster's root key, creating it under a
// lock if no instance has yet.
func loadOrCreateRootKey(st certmagic.Storage) ([]byte, error) {
	ctx, cancel := opCtx()
	defer cancel()
	read := func() ([]byte, error) {
		b, err := st.Load(ctx, storageKeyPath)
		if err != nil {
			return nil, err
		}
		k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(k) != 32 {
			return nil, fmt.Errorf("%s in storage is not a 32-byte base64 key", storageKeyPath)
		}
		return k, nil
	}
	if k, err := read(); err == nil || !notExist(err) {
		return k, err
	}
	if err := st.Lock(ctx, storageKeyPath); err != nil {
		return nil, err
	}
	defer func() { _ = unlock(st, storageKeyPath) }()
	if k, err := read(); err == nil || !notExist(err) {
		return k, err // another instance made it while we waited
	}
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	return k, st.Store(ctx, storageKeyPath, []byte(base64.StdEncoding.EncodeToString(k)))
}

// storageLimiter keeps each client's failures in storage. An attempt holds
// the client's storage lock from reserve to settle, so attempts of one client
// are checked one at a time across the cluster and each failure is recorded
// atomically.
type storageLimiter struct {
	st certmagic.Storage
}

type clientRecord struct {
	Failures    int   `json:"failures"`
	WindowEnd   int64 `json:"window_end"`   // Unix nanoseconds
	LockedUntil int64 `json:"locked_until"` // Unix nanoseconds, 0 if not locked
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
	until := time.Unix(0, rec.LockedUntil)
	if rec.LockedUntil == 0 || !now().Before(until) {
		return time.Time{}, false, nil
	}
	return until, true, nil
}

func (l *storageLimiter) remaining(key netip.Addr, maxAttempts int) int {
	ctx, cancel := opCtx()
	defer cancel()
	rec, err := l.load(ctx, key)
	t := now().UnixNano()
	if err != nil || (t >= rec.WindowEnd && t >= rec.LockedUntil) {
		return maxAttempts
	}
	return max(maxAttempts-rec.Failures, 0)
}

func (l *storageLimiter) reserve(key netip.Addr, maxAttempts int, window time.Duration) (reservation, time.Time, error) {
	lctx, cancel := context.WithTimeout(context.Background(), attemptLockWait)
	defer cancel()
	name := clientPath(key)
	if err := l.st.Lock(lctx, name); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return refusedInFlight, time.Time{}, nil
		}
		return 0, time.Time{}, err
	}
	ctx, cancel2 := opCtx()
	defer cancel2()
	rec, err := l.load(ctx, key)
	if err != nil {
		return 0, time.Time{}, errors.Join(err, unlock(l.st, name))
	}
	t := now()
	if until := time.Unix(0, rec.LockedUntil); rec.LockedUntil != 0 && t.Before(until) {
		return refusedLocked, until, unlock(l.st, name)
	}
	if t.UnixNano() < rec.WindowEnd && rec.Failures >= maxAttempts {
		return refusedInFlight, time.Time{}, unlock(l.st, name)
	}
	return reserved, time.Time{}, nil // the lock is held until settle
}

func (l *storageLimiter) settle(key netip.Addr, failed bool, maxAttempts int, window time.Duration) (rem int, until time.Time, err error) {
	ctx, cancel := opCtx()
	defer cancel()
	name := clientPath(key)
	defer func() { err = errors.Join(err, unlock(l.st, name)) }()
	if !failed {
		return maxAttempts, time.Time{}, nil
	}
	rec, err := l.load(ctx, key)
	if err != nil {
		return 0, time.Time{}, err
	}
	t := now()
	if rec.LockedUntil != 0 && t.UnixNano() < rec.LockedUntil {
		return 0, time.Time{}, nil
	}
	if t.UnixNano() >= rec.WindowEnd {
		rec = clientRecord{WindowEnd: t.Add(window).UnixNano()}
	}
	rec.Failures++
	if rec.Failures >= maxAttempts {
		until = t.Add(window)
		rec.LockedUntil = until.UnixNano()
	}
	b, _ := json.Marshal(rec)
	if err := l.st.Store(ctx, name, b); err != nil {
		return 0, time.Time{}, err
	}
	return max(maxAttempts-rec.Failures, 0), until, nil
}

func (l *storageLimiter) reset(key netip.Addr) error {
	ctx, cancel := opCtx()
	defer cancel()
	if err := l.st.Delete(ctx, clientPath(key)); err != nil && !notExist(err) {
		return err
	}
	return nil
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
	t := now().UnixNano()
	var out []lockedClient
	for _, k := range keys {
		b, err := l.st.Load(ctx, k)
		if err != nil {
			continue
		}
		var rec clientRecord
		if json.Unmarshal(b, &rec) != nil || t >= rec.LockedUntil {
			continue
		}
		name := strings.NewReplacer("-", ":", "_", ".").Replace(path.Base(k))
		out = append(out, lockedClient{Client: name, Failures: rec.Failures, LockedUntil: time.Unix(0, rec.LockedUntil)})
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
	t := now().UnixNano()
	if rec.WindowEnd == 0 || (t >= rec.WindowEnd && t >= rec.LockedUntil) {
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

type codeRecord struct {
	MAC     string `json:"mac"`
	Flow    string `json:"flow"`
	Client  string `json:"client"`
	Expires int64  `json:"expires"` // Unix nanoseconds
	Wrong   int    `json:"wrong"`
	Reason  string `json:"reason,omitempty"`
}

func codePath(scope string) string { return codesDir + "/" + scope }

func (s *storageCodes) load(ctx context.Context, scope string) (*codeRecord, error) {
	b, err := s.st.Load(ctx, codePath(scope))
	if notExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rec codeRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("%s: %v", codePath(scope), err)
	}
	return &rec, nil
}

func (rec *codeRecord) bound(flow string, client netip.Addr, t time.Time) bool {
	return t.UnixNano() < rec.Expires && hmac.Equal([]byte(rec.Flow), []byte(flow)) && rec.Client == client.String()
}

// locked runs fn holding the scope's storage lock.
func (s *storageCodes) locked(scope string, fn func(ctx context.Context) error) (err error) {
	ctx, cancel := opCtx()
	defer cancel()
	if err := s.st.Lock(ctx, codePath(scope)); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, unlock(s.st, codePath(scope))) }()
	return fn(ctx)
}

func (s *storageCodes) put(scope, code, flow string, client netip.Addr, ttl time.Duration, reason string) (time.Time, error) {
	exp := now().Add(ttl)
	mac := codeMAC(s.key, scope, code)
	b, _ := json.Marshal(codeRecord{MAC: hex.EncodeToString(mac[:]), Flow: flow, Client: client.String(), Expires: exp.UnixNano(), Reason: reason})
	return exp, s.locked(scope, func(ctx context.Context) error { return s.st.Store(ctx, codePath(scope), b) })
}

func (s *storageCodes) pending(scope, flow string, client netip.Addr) (time.Time, bool) {
	ctx, cancel := opCtx()
	defer cancel()
	rec, err := s.load(ctx, scope)
	if err != nil || rec == nil || !rec.bound(flow, client, now()) {
		return time.Time{}, false
	}
	return time.Unix(0, rec.Expires), true
}

func (s *storageCodes) verify(scope, flow string, client netip.Addr, code string, alt altCheck) (codeResult, string, error) {
	mac := codeMAC(s.key, scope, code)
	res, reason := codeNotFound, ""
	err := s.locked(scope, func(ctx context.Context) error {
		rec, err := s.load(ctx, scope)
		if err != nil || rec == nil {
			return err
		}
		t := now()
		if t.UnixNano() >= rec.Expires {
			return s.st.Delete(ctx, codePath(scope))
		}
		if !rec.bound(flow, client, t) {
			return nil
		}
		want, _ := hex.DecodeString(rec.MAC)
		ok := hmac.Equal(mac[:], want)
		if !ok && alt != nil {
			if ok, err = alt(ctx, code); err != nil {
				return err
			}
		}
		if ok {
			res, reason = codeOK, rec.Reason
			return s.st.Delete(ctx, codePath(scope))
		}
		rec.Wrong++
		if rec.Wrong >= maxWrongCodes {
			res = codeVoided
			return s.st.Delete(ctx, codePath(scope))
		}
		res = codeWrong
		b, _ := json.Marshal(rec)
		return s.st.Store(ctx, codePath(scope), b)
	})
	if err != nil {
		return codeNotFound, "", err
	}
	return res, reason, nil
}

func (s *storageCodes) cancel(scope, flow string) error {
	return s.locked(scope, func(ctx context.Context) error {
		rec, err := s.load(ctx, scope)
		if err != nil || rec == nil || !hmac.Equal([]byte(rec.Flow), []byte(flow)) {
			return err
		}
		return s.st.Delete(ctx, codePath(scope))
	})
}

func (s *storageCodes) pendingFor(scope string) (time.Time, bool) {
	ctx, cancel := opCtx()
	defer cancel()
	rec, err := s.load(ctx, scope)
	if err != nil || rec == nil || now().UnixNano() >= rec.Expires {
		return time.Time{}, false
	}
	return time.Unix(0, rec.Expires), true
}

func (s *storageCodes) sweep() int { return 0 }

// persistRevocation writes a logout to storage, where every instance's
// refresher finds it.
func persistRevocation(st certmagic.Storage, s session) error {
	ctx, cancel := opCtx()
	defer cancel()
	return st.Store(ctx, revokedDir+"/"+s.ID, []byte(strconv.FormatInt(s.Expires.Unix(), 10)))
}

// refreshRevocations loads the revocations other instances wrote.
func refreshRevocations(ctx context.Context, st certmagic.Storage, sess *sessions) error {
	ctx, cancel := context.WithTimeout(ctx, storageTimeout)
	defer cancel()
	// The revoke-all moments first: they exist even where no single logout
	// was ever written.
	if epochs, err := st.List(ctx, epochsDir, false); err == nil {
		for _, k := range epochs {
			if b, err := st.Load(ctx, k); err == nil {
				sess.setNotBefore(path.Base(k), strings.TrimSpace(string(b)))
			}
		}
	} else if !notExist(err) {
		return err
	}
	keys, err := st.List(ctx, revokedDir, false)
	if notExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, k := range keys {
		id := path.Base(k)
		if sess.isRevoked(id) {
			continue
		}
		b, err := st.Load(ctx, k)
		if notExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		exp, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			continue
		}
		sess.markRevoked(id, time.Unix(exp, 0))
	}
	return nil
}

// sweepStorage drops expired records for the whole cluster; whichever
// instance holds the sweep lock does it, at most once per sweepInterval.
// Client and code records are deleted under their own lock, after a second
// look, so that a record another instance has just renewed is never lost.
func sweepStorage(ctx context.Context, st certmagic.Storage, log *zap.Logger) error {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := st.Lock(lctx, sweepLock); err != nil {
		if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			return nil // another instance is sweeping, or we are stopping
		}
		return err
	}
	defer func() { _ = unlock(st, sweepLock) }()
	ctx, cancel2 := context.WithTimeout(ctx, time.Minute)
	defer cancel2()
	t := now()
	if b, err := st.Load(ctx, sweptAtPath); err == nil {
		if last, err := strconv.ParseInt(string(b), 10, 64); err == nil && t.Sub(time.Unix(0, last)) < sweepInterval/2 {
			return nil // another instance just did it
		}
	}
	dropped := 0
	tn := t.UnixNano()
	expired := func(dir string, lockEach bool, isExpired func([]byte) bool) error {
		keys, err := st.List(ctx, dir, false)
		if notExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, k := range keys {
			if ctx.Err() != nil {
				return nil
			}
			if b, err := st.Load(ctx, k); err != nil || !isExpired(b) {
				continue
			}
			if !lockEach {
				if st.Delete(ctx, k) == nil {
					dropped++
				}
				continue
			}
			kctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if err := st.Lock(kctx, k); err != nil {
				cancel()
				continue // in use: not expired for long, or next time
			}
			if b, err := st.Load(kctx, k); err == nil && isExpired(b) && st.Delete(kctx, k) == nil {
				dropped++
			}
			cancel()
			if err := unlock(st, k); err != nil {
				log.Error("break-glass: sweeping storage", zap.Error(err))
			}
		}
		return nil
	}
	errs := errors.Join(
		expired(clientsDir, true, func(b []byte) bool {
			var r clientRecord
			return json.Unmarshal(b, &r) == nil && tn >= r.WindowEnd && tn >= r.LockedUntil
		}),
		expired(codesDir, true, func(b []byte) bool {
			var r codeRecord
			return json.Unmarshal(b, &r) == nil && tn >= r.Expires
		}),
		expired(revokedDir, false, func(b []byte) bool {
			exp, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			return err == nil && t.Unix() >= exp
		}),
	)
	if dropped > 0 {
		log.Debug("break-glass storage swept", zap.Int("dropped", dropped))
	}
	return errors.Join(errs, st.Store(ctx, sweptAtPath, []byte(strconv.FormatInt(tn, 10))))
}
