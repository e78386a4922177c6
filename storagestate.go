// The state's own records in Caddy's storage: its root key, the revoked
// sessions every instance must refuse, and the sweep of what expired.

package breakglass

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

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
			return json.Unmarshal(b, &r) == nil && r.empty(t)
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
