// The state that outlives a config reload (the limiter, pending codes,
// sessions, the delivery queues), kept in a caddy.UsagePool, in memory or
// over Caddy's storage, and the loops that sweep and refresh it.

package breakglass

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// swapCredentials records the credentials of the config being started and
// returns those of the one before it.
func (s *state) swapCredentials(current map[string][]string) (map[string][]string, error) {
	if s.storage == nil {
		s.credMu.Lock()
		defer s.credMu.Unlock()
		prev := s.credentials
		s.credentials = current
		return prev, nil
	}
	ctx, cancel := opCtx()
	defer cancel()
	if err := s.storage.Lock(ctx, credentialsKey); err != nil {
		return nil, err
	}
	defer func() { _ = unlock(s.storage, credentialsKey) }()
	prev := map[string][]string{}
	b, err := s.storage.Load(ctx, credentialsKey)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &prev); err != nil {
			return nil, fmt.Errorf("%s: %v", credentialsKey, err)
		}
	case !notExist(err):
		return nil, err
	}
	b, _ = json.Marshal(current)
	return prev, s.storage.Store(ctx, credentialsKey, b)
}

// statePool keeps the state across config loads: a reload provisions the new
// app (taking a reference) before the old one is cleaned up.
var statePool = caddy.NewUsagePool()

const stateKey = "break_glass"

// sweepInterval is how often expired limiter entries, codes and revocations
// are dropped.
const sweepInterval = time.Minute

// state is what must survive a config reload.
type state struct {
	csrfKey  []byte
	scopeKey []byte
	keyKey   []byte // of the WebAuthn challenges
	// approvalKey signs the approvers' links; approvalIDKey names the
	// approval request of a flow.
	approvalKey, approvalIDKey []byte
	limiter                    limiterBackend
	codes                      codeBackend
	sessions                   *sessions
	deliveries                 *dispatcher
	// notices runs the alerts anyone allowed can cause in bursts
	// (lockouts, codes issued), apart from deliveries, so that a flood of
	// them never crowds out a code mail or a login alert.
	notices  *dispatcher
	lockouts lockoutAlerts
	totp     totpReplay
	uses     usesBackend
	keys     signCounts
	// approvals are the sign-ins waiting for a second person.
	approvals approvalBackend

	// With state memory: the credentials (identity → scopes) of the last
	// config started; with state storage they are in storage.
	credMu      sync.Mutex
	credentials map[string][]string

	// codeAlerts holds back the code_issued alerts of a credential past
	// the first of each lockout window (they too run on notices).
	codeAlerts codeAlerts

	stopSweep context.CancelFunc
	loops     sync.WaitGroup

	// With state storage: the storage, and what the background loop needs.
	storage certmagic.Storage
	log     *zap.Logger
	refresh time.Duration
}

func newState() (caddy.Destructor, error) {
	root := make([]byte, 32)
	if _, err := rand.Read(root); err != nil {
		return nil, fmt.Errorf("break_glass: making the state key: %v", err)
	}
	s := baseState(root)
	s.limiter = newLimiter()
	s.codes = newCodeStore(subkey(root, "code"))
	s.totp = &memoryTOTPReplay{last: map[string]int64{}}
	s.uses = &memoryUses{m: map[string]int{}}
	s.keys = newMemorySignCounts()
	s.approvals = newApprovalStore()
	s.start()
	return s, nil
}

// newStorageState makes the state of a cluster: keys from storage, limiter
// and codes in storage, revocations refreshed from storage.
func newStorageState(st certmagic.Storage, log *zap.Logger, refresh time.Duration) (caddy.Destructor, error) {
	if err := checkLockExcludes(st); err != nil {
		return nil, err
	}
	root, err := loadOrCreateRootKey(st)
	if err != nil {
		return nil, fmt.Errorf("loading the signing key from storage: %v", err)
	}
	s := baseState(root)
	s.limiter = &storageLimiter{st: st}
	s.codes = &storageCodes{st: st, key: subkey(root, "code")}
	s.totp = storageTOTPReplay{st: st}
	s.uses = storageUses{st: st}
	s.keys = newStorageSignCounts(st)
	s.approvals = &storageApprovals{st: st}
	s.storage, s.log, s.refresh = st, log, refresh
	if err := refreshRevocations(context.Background(), st, s.sessions); err != nil {
		log.Error("break-glass: loading revocations from storage", zap.Error(err))
	}
	s.start()
	return s, nil
}

func baseState(root []byte) *state {
	return &state{
		csrfKey:       subkey(root, "csrf"),
		scopeKey:      subkey(root, "scope"),
		keyKey:        subkey(root, "webauthn"),
		approvalKey:   subkey(root, "approval"),
		approvalIDKey: subkey(root, "approval-id"),
		sessions:      newSessions(subkey(root, "session")),
		deliveries:    newDispatcher(maxInFlightDeliveries),
		notices:       newDispatcher(maxInFlightNotices),
		log:           zap.NewNop(), // a storage state's is the app's
	}
}

func (s *state) start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stopSweep = cancel
	liveStates.Store(s, struct{}{})
	s.loops.Add(1)
	go s.sweepLoop(ctx)
	if s.storage != nil {
		s.loops.Add(1)
		go s.refreshLoop(ctx)
	}
}

// endSessions ends every session of a credential issued until now, and
// every code pending for it, here and, with state storage, on every
// instance (sessions at their next refresh). It returns how many live
// sessions issued by this process it ended.
func (s *state) endSessions(scope string) (int, error) {
	t := now()
	n := s.sessions.endAll(scope, t)
	err := s.codes.cancelAll(scope)
	if s.storage != nil {
		ctx, cancel := opCtx()
		defer cancel()
		err = errors.Join(err, s.storage.Store(ctx, epochsDir+"/"+scope, []byte(t.UTC().Format(issuedLayout))))
	}
	return n, err
}

// revoke ends a session here and, with state storage, on every instance.
func (s *state) revoke(sess session) error {
	s.sessions.revoke(sess)
	if s.storage != nil {
		return persistRevocation(s.storage, sess)
	}
	return nil
}

// subkey derives a key for one purpose, so that no MAC made for one purpose
// is ever accepted for another.
func subkey(root []byte, purpose string) []byte {
	h := hmac.New(sha256.New, root)
	h.Write([]byte("break_glass/" + purpose))
	return h.Sum(nil)
}

// scopeOf names a credential without revealing it: a MAC of the identity
// and the hash.
func (s *state) scopeOf(identity string, hash []byte) string {
	m := hmac.New(sha256.New, s.scopeKey)
	m.Write([]byte(identity))
	m.Write([]byte{0})
	m.Write(hash)
	return hex.EncodeToString(m.Sum(nil)[:16])
}

func (s *state) sweepLoop(ctx context.Context) {
	defer s.loops.Done()
	every(ctx, sweepInterval, func() {
		s.limiter.sweep()
		s.codes.sweep()
		s.sessions.sweep()
		if err := s.approvals.sweep(); err != nil && ctx.Err() == nil {
			s.log.Error("break-glass: sweeping approval requests", zap.Error(err))
		}
		if s.storage != nil {
			if err := sweepStorage(ctx, s.storage, s.log); err != nil && ctx.Err() == nil {
				s.log.Error("break-glass: sweeping storage", zap.Error(err))
			}
		}
	})
}

// refreshLoop reloads, with state storage, the logouts made on other
// instances; it runs on its own so that a slow sweep never delays it.
func (s *state) refreshLoop(ctx context.Context) {
	defer s.loops.Done()
	every(ctx, s.refresh, func() {
		if err := refreshRevocations(ctx, s.storage, s.sessions); err != nil && ctx.Err() == nil {
			s.log.Error("break-glass: refreshing revocations from storage; sessions are checked against the last known set", zap.Error(err))
		}
	})
}

// every runs fn every d until ctx ends: the background loops.
func every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// Destruct stops the state's background work: deliveries in flight get a
// short grace, then are cancelled and waited for.
func (s *state) Destruct() error {
	liveStates.Delete(s)
	s.stopSweep()
	s.loops.Wait()
	var wg sync.WaitGroup
	wg.Go(func() { s.notices.close(deliveryGrace) })
	s.deliveries.close(deliveryGrace)
	wg.Wait()
	return nil
}
