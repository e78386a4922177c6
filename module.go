// Package breakglass is a Caddy HTTP handler that guards routes with an
// emergency login (password, then an emailed one-time code) and alerts on
// every use. This file registers the modules and holds the break_glass app:
// the settings every handler shares (its state is in state.go).
package breakglass

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"slices"
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
	// defaultMaxHashMemory lets five argon2id comparisons of Caddy's
	// default parameters (46 MiB each) run at once.
	defaultMaxHashMemory = 256 << 20
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

	// The most memory the password checks running at once may take, in
	// bytes (Caddyfile: 256MiB). An argon2id comparison takes its hash's m
	// (Caddy's default: 46 MiB); a bcrypt one a few KiB, counted as none.
	// A hash that needs more than this is refused at load. Default: 256 MiB.
	MaxHashMemory int64 `json:"max_hash_memory,omitempty"`

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
	uses usesBackend
	totp totpReplay
	// keyCounts are the security keys' sign counters and clone warnings,
	// kept in the same place.
	keyCounts signCounts
	hashes    *hashGate
	lim       limits           // the per-client limits, from the settings above
	codeLim   codeLimits       // the per-credential bound on codes
	handlers  *handlerRegistry // provisioned with this app, for the admin API
	stateKey  string
	state     *state
	mailer    *mailer
	logger    *zap.Logger
	// With approval: the watch for timeouts nobody saw, its stop and its end.
	stopWatch context.CancelFunc
	watchDone chan struct{}
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
	if a.MaxHashMemory < 0 {
		return fmt.Errorf("max_hash_memory: must be positive, got %d", a.MaxHashMemory)
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
	if a.MaxHashMemory == 0 {
		a.MaxHashMemory = defaultMaxHashMemory
	}
	a.hashes = newHashGate(a.MaxConcurrentHashes, a.MaxHashMemory)
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
	a.uses, a.totp, a.keyCounts = a.state.uses, a.state.totp, a.state.keys
	if a.storage != nil {
		a.uses, a.totp, a.keyCounts = storageUses{st: a.storage}, storageTOTPReplay{st: a.storage}, newStorageSignCounts(a.storage)
	}
	appStarted(a)
	return nil
}

// hashWait is how long a sign-in waits for a password-checking slot.
var hashWait = 2 * time.Second

// acquireHash waits up to hashWait for a password-checking slot with mem
// bytes; a client
// with fewer failures (prio) is served first.
func (a *App) acquireHash(ctx context.Context, prio int, mem int64) bool {
	return a.hashes.acquire(ctx, prio, mem, hashWait)
}

func (a *App) releaseHash(mem int64) { a.hashes.release(mem) }

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
	if a.state != nil && slices.ContainsFunc(a.handlers.all(), func(h *Handler) bool {
		return slices.ContainsFunc(h.accounts, func(acc *account) bool { return acc.approval != nil })
	}) {
		ctx, cancel := context.WithCancel(context.Background())
		a.stopWatch, a.watchDone = cancel, make(chan struct{})
		go func() {
			defer close(a.watchDone)
			every(ctx, approvalWatch, a.noteTimeouts)
		}()
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
		for _, acc := range h.accounts {
			if !slices.Contains(current[acc.identity], acc.scope) {
				current[acc.identity] = append(current[acc.identity], acc.scope)
			}
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

// Stop is part of caddy.App: it ends the watch for approval timeouts.
// Deliveries in flight belong to the shared state and are ended by Cleanup
// when the last app lets go of it.
func (a *App) Stop() error {
	if a.stopWatch != nil {
		a.stopWatch()
		<-a.watchDone
	}
	return nil
}

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

// Interface guards.
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
