// Package breakglass is a Caddy HTTP handler that guards routes with an
// emergency login (password, then an emailed one-time code) and alerts on
// every use. This file registers the modules and holds the break_glass app:
// the settings every handler shares and the state that outlives reloads.
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
	"reflect"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
	caddy.RegisterModule(Handler{})
}

// Defaults of the app's settings.
const (
	defaultMaxAttempts = 5
	defaultLockout     = 15 * time.Minute
	defaultCodeTTL     = 10 * time.Minute
	defaultSessionTTL  = time.Hour
)

// App holds what every break_glass handler shares: the limits, the default
// SMTP transport, and (out of the config) the per-client limiter, the pending
// codes and the session key and revocations. It is loaded with its defaults
// when a handler is configured and the app is not.
//
// The state lives in a package-level pool, not in the App value, so a config
// reload (which makes a new App) keeps lockouts, pending codes and sessions.
// It lasts as long as the Caddy process; a restart begins afresh.
type App struct {
	// Failed attempts (wrong password or email, wrong code) a client may make
	// within the lockout window before it is locked out. Default: 5.
	MaxAttempts int `json:"max_attempts,omitempty"`

	// How long a client stays locked out, and the window in which its
	// failures are counted. Default: 15m.
	Lockout caddy.Duration `json:"lockout,omitempty"`

	// How long an emailed code stays valid. Default: 10m.
	CodeTTL caddy.Duration `json:"code_ttl,omitempty"`

	// How long a break-glass session lasts. Default: 1h.
	SessionTTL caddy.Duration `json:"session_ttl,omitempty"`

	// The default mail transport of every handler that sets none itself.
	SMTP *SMTPConfig `json:"smtp,omitempty"`

	// How many password checks (bcrypt) may run at once across all handlers.
	// Waiting sign-ins are served by the client's failures in its window
	// (none first), then in order; one that cannot start within 2s gets 503
	// and does not count as a failed attempt. Default: half the CPUs, at
	// least 1, so that a flood of sign-ins never takes every core.
	MaxConcurrentHashes int `json:"max_concurrent_hashes,omitempty"`

	// How many clients the limiter tracks at once. When full, a new client
	// is refused (429) until entries expire; a tracked client, locked or
	// not, is never evicted. Default: 100000 (about 12-15 MB).
	MaxTrackedClients int `json:"max_tracked_clients,omitempty"`

	// How many codes (right passwords) a client may be issued within the
	// lockout window, whatever the credential; the next right password is
	// refused (429) before any hashing until the window ends. Default: 3.
	CodesPerClient int `json:"codes_per_client,omitempty"`

	// How many codes a credential may be issued within the lockout window,
	// whoever asks; it bounds the code mails and the pending codes (one per
	// client). The next one gets 429. Default: 10.
	CodesPerCredential int `json:"codes_per_credential,omitempty"`

	// Where the limiter, pending codes, the signing key and revocations live:
	// "memory" (default: this process; kept across reloads, lost on restart)
	// or "storage" (Caddy's configured storage, shared by every instance
	// that uses it, and kept across restarts).
	State string `json:"state,omitempty"`

	// With state storage: how often each instance reloads the logouts made
	// on other instances. Default: 5s. Set when the state is first made;
	// a change takes effect at the next restart.
	RefreshInterval caddy.Duration `json:"refresh_interval,omitempty"`

	ctx     caddy.Context
	storage certmagic.Storage // the config's storage, where drills are recorded
	// max_uses counts and the last TOTP step per credential: in the
	// config's storage (kept across restarts whatever the state mode), or
	// in the state when there is none.
	uses     usesBackend
	totp     totpReplay
	hashes   *hashGate
	lim      limits           // the per-client limits, from the settings above
	codeLim  codeLimits       // the per-credential bound on codes
	handlers *handlerRegistry // provisioned with this app, for the admin API
	stateKey string
	state    *state
	mailer   *mailer
	logger   *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "break_glass",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision sets defaults, resolves the SMTP settings and attaches the shared
// state.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.storage = ctx.Storage()
	var st certmagic.Storage
	if a.State == "storage" {
		st = ctx.Storage()
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	return a.setup(ctx.Logger(), st)
}

// setup is Provision once the logger (and, for state storage, the storage)
// is known.
func (a *App) setup(logger *zap.Logger, st certmagic.Storage) error {
	a.logger = logger
	for _, n := range []struct {
		name string
		val  int
	}{{"max_attempts", a.MaxAttempts}, {"max_concurrent_hashes", a.MaxConcurrentHashes}, {"max_tracked_clients", a.MaxTrackedClients}, {"codes_per_client", a.CodesPerClient}, {"codes_per_credential", a.CodesPerCredential}} {
		if n.val < 0 {
			return fmt.Errorf("%s: must be at least 1, got %d", n.name, n.val)
		}
	}
	for _, d := range []struct {
		name string
		val  caddy.Duration
	}{{"lockout", a.Lockout}, {"code_ttl", a.CodeTTL}, {"session_ttl", a.SessionTTL}, {"refresh_interval", a.RefreshInterval}} {
		if d.val < 0 {
			return fmt.Errorf("%s: must be a positive duration, got %s", d.name, time.Duration(d.val))
		}
	}
	if a.MaxAttempts == 0 {
		a.MaxAttempts = defaultMaxAttempts
	}
	if a.Lockout == 0 {
		a.Lockout = caddy.Duration(defaultLockout)
	}
	if a.CodeTTL == 0 {
		a.CodeTTL = caddy.Duration(defaultCodeTTL)
	}
	if a.SessionTTL == 0 {
		a.SessionTTL = caddy.Duration(defaultSessionTTL)
	}
	if a.MaxConcurrentHashes == 0 {
		a.MaxConcurrentHashes = max(1, runtime.NumCPU()/2)
	}
	if a.MaxTrackedClients == 0 {
		a.MaxTrackedClients = defaultMaxTrackedClients
	}
	if a.CodesPerClient == 0 {
		a.CodesPerClient = defaultCodesPerClient
	}
	if a.CodesPerCredential == 0 {
		a.CodesPerCredential = defaultCodesPerCredential
	}
	a.hashes = newHashGate(a.MaxConcurrentHashes)
	a.lim = limits{maxAttempts: a.MaxAttempts, window: time.Duration(a.Lockout), codesPerClient: a.CodesPerClient}
	a.codeLim = codeLimits{perCredential: a.CodesPerCredential, window: time.Duration(a.Lockout)}
	a.handlers = new(handlerRegistry)
	if a.SMTP != nil {
		m, err := a.SMTP.provision(caddy.NewReplacer(), "smtp")
		if err != nil {
			return err
		}
		a.mailer = m
	}
	if a.RefreshInterval == 0 {
		a.RefreshInterval = caddy.Duration(defaultRefreshInterval)
	}
	ctor := newState
	switch a.State {
	case "", "memory":
		a.State, a.stateKey = "memory", stateKey
	case "storage":
		if st == nil {
			return errors.New("state storage: no storage is configured")
		}
		// One state per storage value: a reload that changes the storage
		// gets a state on the new one (all that matters is in storage).
		a.stateKey = fmt.Sprintf("%s/storage/%p", stateKey, st)
		refresh := time.Duration(a.RefreshInterval)
		ctor = func() (caddy.Destructor, error) { return newStorageState(st, a.logger, refresh) }
	default:
		return fmt.Errorf("state: %q: must be memory or storage", a.State)
	}
	v, _, err := statePool.LoadOrNew(a.stateKey, ctor)
	if err != nil {
		return fmt.Errorf("state %s: %v", a.State, err)
	}
	a.state = v.(*state)
	a.state.limiter.setMaxClients(a.MaxTrackedClients)
	a.uses, a.totp = a.state.uses, a.state.totp
	if a.storage != nil {
		a.uses, a.totp = storageUses{st: a.storage}, storageTOTPReplay{st: a.storage}
	}
	appStarted(a)
	return nil
}

// hashWait is how long a sign-in waits for a password-checking slot.
var hashWait = 2 * time.Second

// acquireHash waits up to hashWait for a password-checking slot; a client
// with fewer failures (prio) is served first.
func (a *App) acquireHash(ctx context.Context, prio int) bool {
	return a.hashes.acquire(ctx, prio, hashWait)
}

func (a *App) releaseHash() { a.hashes.release() }

// Start is part of caddy.App; the state's background work is started with
// the state itself, so that it keeps running across reloads. Once every
// handler of this config is known, it retires the credentials the config
// no longer has, and warns of a proxy setup that lets clients choose their
// address.
func (a *App) Start() error {
	if a.state != nil {
		a.retireCredentials()
	}
	if a.ctx.Context != nil {
		a.warnUntrustedForwarding()
	}
	return nil
}

// credentialsKey is where, with state storage, the credentials of the last
// config started are kept.
const credentialsKey = storagePrefix + "credentials"

// retireCredentials ends the sessions and codes of every credential (email
// and hash) that the last config started had and this one has not, so that
// changing a hash and changing it back never revives the sessions made
// before (each credential's scope is the same whenever its hash is).
func (a *App) retireCredentials() {
	current := map[string][]string{}
	for _, h := range a.handlers.all() {
		if !slices.Contains(current[h.account.identity], h.account.scope) {
			current[h.account.identity] = append(current[h.account.identity], h.account.scope)
		}
	}
	prev, err := a.state.swapCredentials(current)
	if err != nil {
		a.logger.Error("break-glass: reading the credentials of the last config; sessions of a changed hash end only by their scope", zap.Error(err))
		return
	}
	for identity, scopes := range prev {
		for _, scope := range scopes {
			if slices.Contains(current[identity], scope) {
				continue
			}
			n, err := a.state.endSessions(scope)
			if err != nil {
				a.logger.Error("break-glass: ending the sessions of a credential no longer configured", zap.String("email", identity), zap.Error(err))
				continue
			}
			a.logger.Info("break-glass credential retired: its sessions and codes are ended", zap.String("email", identity), zap.Int("sessions_ended", n))
		}
	}
}

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

// trustsProxies reports whether a provisioned server has trusted_proxies.
// Caddy drops the raw setting once the module is loaded and keeps the
// module unexported, so it is read by reflection (a test checks it against
// the Caddy this is built with).
func trustsProxies(srv *caddyhttp.Server) bool {
	if len(srv.TrustedProxiesRaw) > 0 {
		return true
	}
	f := reflect.ValueOf(srv).Elem().FieldByName("trustedProxies")
	return f.IsValid() && f.Kind() == reflect.Interface && !f.IsNil()
}

// warnUntrustedForwarding warns when a server trusts proxies without
// trusted_proxies_strict: Caddy then takes the left-most address of
// X-Forwarded-For, which a proxy that appends to the client's own header
// lets the client choose — an allowed address, and a fresh limiter key at
// each request.
func (a *App) warnUntrustedForwarding() {
	if len(a.handlers.all()) == 0 {
		return
	}
	v, err := a.ctx.AppIfConfigured("http")
	if err != nil {
		return
	}
	httpApp, ok := v.(*caddyhttp.App)
	if !ok {
		return
	}
	for name, srv := range httpApp.Servers {
		if trustsProxies(srv) && srv.TrustedProxiesStrict == 0 {
			a.logger.Warn("break-glass: this server trusts proxies without trusted_proxies_strict: a client behind a proxy that appends to X-Forwarded-For can choose the address the allow-list and the limiter see; set trusted_proxies_strict",
				zap.String("server", name))
		}
	}
}

// Stop is part of caddy.App. Deliveries in flight belong to the shared state
// and are ended by Cleanup when the last app lets go of it.
func (a *App) Stop() error { return nil }

// Cleanup releases this app's hold on the shared state; the last one to let go
// stops its deliveries and sweeper.
func (a *App) Cleanup() error {
	if a.state == nil {
		return nil
	}
	appEnded(a)
	_, err := statePool.Delete(a.stateKey)
	a.state = nil
	return err
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
	csrfKey    []byte
	scopeKey   []byte
	limiter    limiterBackend
	codes      codeBackend
	sessions   *sessions
	deliveries *dispatcher
	// notices runs the alerts anyone allowed can cause in bursts
	// (lockouts, codes issued), apart from deliveries, so that a flood of
	// them never crowds out a code mail or a login alert.
	notices  *dispatcher
	lockouts lockoutAlerts
	totp     totpReplay
	uses     usesBackend

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
	s.storage, s.log, s.refresh = st, log, refresh
	if err := refreshRevocations(context.Background(), st, s.sessions); err != nil {
		log.Error("break-glass: loading revocations from storage", zap.Error(err))
	}
	s.start()
	return s, nil
}

func baseState(root []byte) *state {
	return &state{
		csrfKey:    subkey(root, "csrf"),
		scopeKey:   subkey(root, "scope"),
		sessions:   newSessions(subkey(root, "session")),
		deliveries: newDispatcher(maxInFlightDeliveries),
		notices:    newDispatcher(maxInFlightNotices),
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
	sweep := time.NewTicker(sweepInterval)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			s.limiter.sweep()
			s.codes.sweep()
			s.sessions.sweep()
			if s.storage != nil {
				if err := sweepStorage(ctx, s.storage, s.log); err != nil && ctx.Err() == nil {
					s.log.Error("break-glass: sweeping storage", zap.Error(err))
				}
			}
		}
	}
}

// refreshLoop reloads, with state storage, the logouts made on other
// instances; it runs on its own so that a slow sweep never delays it.
func (s *state) refreshLoop(ctx context.Context) {
	defer s.loops.Done()
	t := time.NewTicker(s.refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := refreshRevocations(ctx, s.storage, s.sessions); err != nil && ctx.Err() == nil {
				s.log.Error("break-glass: refreshing revocations from storage; sessions are checked against the last known set", zap.Error(err))
			}
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

// Interface guards.
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
