// The admin API (admin.api.break_glass), served by Caddy's admin endpoint
// with its access controls: status, unlock a client, end sessions.

package breakglass

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// currentApp is the break_glass app of the running config, for the admin
// API (which Caddy loads apart from the config's apps): the latest app
// provisioned that has not been cleaned up. A config that fails to load
// cleans up its app, and the one still running is current again.
var currentApp atomic.Pointer[App]

var liveApps struct {
	mu   sync.Mutex
	list []*App
}

func appStarted(a *App) {
	liveApps.mu.Lock()
	defer liveApps.mu.Unlock()
	liveApps.list = append(liveApps.list, a)
	currentApp.Store(a)
}

func appEnded(a *App) {
	liveApps.mu.Lock()
	defer liveApps.mu.Unlock()
	for i, x := range liveApps.list {
		if x == a {
			liveApps.list = append(liveApps.list[:i], liveApps.list[i+1:]...)
			break
		}
	}
	var cur *App
	if n := len(liveApps.list); n > 0 {
		cur = liveApps.list[n-1]
	}
	currentApp.Store(cur)
}

// adminAPI serves /break_glass/status, /break_glass/unlock,
// /break_glass/revoke, /break_glass/approve and /break_glass/refuse on
// Caddy's admin endpoint.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.break_glass", New: func() caddy.Module { return new(adminAPI) }}
}

// Routes returns the admin routes.
func (adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/break_glass/status", Handler: caddy.AdminHandlerFunc(handleStatus)},
		{Pattern: "/break_glass/unlock", Handler: caddy.AdminHandlerFunc(handleUnlock)},
		{Pattern: "/break_glass/revoke", Handler: caddy.AdminHandlerFunc(handleRevoke)},
		{Pattern: "/break_glass/approve", Handler: handleDecision(true)},
		{Pattern: "/break_glass/refuse", Handler: handleDecision(false)},
	}
}

func apiError(status int, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return caddy.APIError{HTTPStatus: status, Err: err, Message: err.Error()}
}

func runningApp() (*App, error) {
	a := currentApp.Load()
	if a == nil || a.state == nil {
		return nil, apiError(http.StatusNotFound, "break_glass is not running (no break_glass handler or app in the config)")
	}
	return a, nil
}

// handlerRegistry lists the handlers provisioned with an app.
type handlerRegistry struct {
	mu   sync.Mutex
	list []*Handler
}

func (hr *handlerRegistry) add(h *Handler) {
	hr.mu.Lock()
	hr.list = append(hr.list, h)
	hr.mu.Unlock()
}

// all returns the handlers, in the order they were provisioned.
func (hr *handlerRegistry) all() []*Handler {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	return slices.Clone(hr.list)
}

// identities are the accounts of every handler, by credential scope.
func (a *App) identities() map[string]*account {
	out := map[string]*account{}
	for _, h := range a.handlers.all() {
		for _, acc := range h.accounts {
			out[acc.scope] = acc
		}
	}
	return out
}

type identityStatus struct {
	Email        string     `json:"email"`
	CodePending  bool       `json:"code_pending"`
	CodesPending int        `json:"codes_pending"`
	CodeExpires  *time.Time `json:"code_expires,omitempty"` // of the last to expire
	Sessions     int        `json:"live_sessions"`
	SecondFactor []string   `json:"second_factor"`
	Keys         []keyInfo  `json:"webauthn_keys"`
}

// keyInfo is what the status shows of a security key: never its ID or
// public key.
type keyInfo struct {
	Name         string     `json:"name"`
	AAGUID       string     `json:"aaguid,omitempty"`
	SignCount    uint32     `json:"sign_count"`
	CloneWarning bool       `json:"clone_warning"`
	LastUsed     *time.Time `json:"last_used,omitempty"`
	Error        string     `json:"error,omitempty"` // its record could not be read
}

// statusReply is what GET /break_glass/status answers (and what
// `caddy break-glass status` reads).
type statusReply struct {
	Identities    []identityStatus `json:"identities"`
	LockedClients []lockedClient   `json:"locked_clients"`
	// PendingApprovals are the sign-ins waiting for an approver.
	PendingApprovals []pendingApproval `json:"pending_approvals"`
	LastDrill        *drillRecord      `json:"last_drill"`
	LastGoodDrill    *drillRecord      `json:"last_good_drill"`
	Settings         appSettings       `json:"settings"`
}

// pendingApproval is what the status shows of an open approval request.
type pendingApproval struct {
	ID        string    `json:"id"`
	Account   string    `json:"account"`
	Client    string    `json:"client"`
	Host      string    `json:"host"`
	Reason    string    `json:"reason,omitempty"`
	Approvers []string  `json:"approvers"`
	Created   time.Time `json:"created"`
	Deadline  time.Time `json:"deadline"`
	OnTimeout string    `json:"on_timeout"`
}

type appSettings struct {
	MaxAttempts         int    `json:"max_attempts"`
	Lockout             string `json:"lockout"`
	CodeTTL             string `json:"code_ttl"`
	SessionTTL          string `json:"session_ttl"`
	State               string `json:"state"`
	MaxConcurrentHashes int    `json:"max_concurrent_hashes"`
	MaxTrackedClients   int    `json:"max_tracked_clients"`
	CodesPerClient      int    `json:"codes_per_client"`
	CodesPerCredential  int    `json:"codes_per_credential"`
}

func handleStatus(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return apiError(http.StatusMethodNotAllowed, "method %s not allowed; use GET", r.Method)
	}
	a, err := runningApp()
	if err != nil {
		return err
	}
	var ids []identityStatus
	for scope, acc := range a.identities() {
		st := identityStatus{Email: acc.email, Sessions: a.state.sessions.active(scope), SecondFactor: acc.factors.names(), Keys: []keyInfo{}}
		if n, exp := a.state.codes.pendingFor(scope); n > 0 {
			st.CodePending, st.CodesPending, st.CodeExpires = true, n, &exp
		}
		for _, k := range acc.keys {
			info := keyInfo{Name: k.name, AAGUID: k.aaguid}
			ctx, cancel := opCtx()
			rec, err := keyStatus(ctx, a.keyCounts, k)
			cancel()
			if err != nil {
				info.Error = err.Error()
			}
			info.SignCount, info.CloneWarning = rec.Count, rec.CloneWarning
			if rec.LastUsed != 0 {
				t := time.Unix(rec.LastUsed, 0).UTC()
				info.LastUsed = &t
			}
			st.Keys = append(st.Keys, info)
		}
		ids = append(ids, st)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].Email < ids[j].Email })
	locked, err := a.state.limiter.locked()
	if err != nil {
		return apiError(http.StatusServiceUnavailable, "reading the limiter: %v", err)
	}
	sort.Slice(locked, func(i, j int) bool { return locked[i].Client < locked[j].Client })
	recs, err := a.state.approvals.list()
	if err != nil {
		return apiError(http.StatusServiceUnavailable, "reading the approval requests: %v", err)
	}
	approvals := []pendingApproval{}
	for _, rec := range pendingApprovals(recs, now()) {
		approvals = append(approvals, pendingApproval{ID: rec.ID, Account: rec.Account, Client: rec.Client, Host: rec.Host, Reason: rec.Reason,
			Approvers: rec.Approvers, Created: time.Unix(0, rec.Created).UTC(), Deadline: time.Unix(0, rec.Deadline).UTC(), OnTimeout: rec.OnTimeout})
	}
	st := statusReply{
		Identities:       ids,
		LockedClients:    locked,
		PendingApprovals: approvals,
		Settings: appSettings{
			MaxAttempts: a.MaxAttempts, Lockout: time.Duration(a.Lockout).String(), CodeTTL: time.Duration(a.CodeTTL).String(),
			SessionTTL: time.Duration(a.SessionTTL).String(), State: a.State,
			MaxConcurrentHashes: a.MaxConcurrentHashes, MaxTrackedClients: a.MaxTrackedClients,
			CodesPerClient: a.lim.codesPerClient, CodesPerCredential: a.codeLim.perCredential,
		},
	}
	if a.storage != nil {
		for _, d := range []struct {
			dst **drillRecord
			key string
		}{{&st.LastDrill, drillKey}, {&st.LastGoodDrill, drillOKKey}} {
			ctx, cancel := opCtx()
			rec, ok, err := loadDrill(ctx, a.storage, d.key)
			cancel()
			if err != nil {
				return apiError(http.StatusServiceUnavailable, "reading the drill record: %v", err)
			}
			if ok {
				*d.dst = &rec
			}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(st)
}

func readJSON(r *http.Request, v any) error {
	if r.Method != http.MethodPost {
		return apiError(http.StatusMethodNotAllowed, "method %s not allowed; use POST", r.Method)
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, 4096))
	if err != nil {
		return apiError(http.StatusBadRequest, "reading the request: %v", err)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return apiError(http.StatusBadRequest, "decoding the request: %v", err)
	}
	return nil
}

func handleUnlock(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Client string `json:"client"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	a, err := runningApp()
	if err != nil {
		return err
	}
	addr, ok := parseClientIP(strings.TrimSpace(req.Client))
	if !ok {
		return apiError(http.StatusBadRequest, "client %q: not an IP address", req.Client)
	}
	key := limiterKey(addr)
	found, err := a.state.limiter.unlock(key)
	if err != nil {
		return apiError(http.StatusServiceUnavailable, "unlocking %s: %v", key, err)
	}
	if !found {
		return apiError(http.StatusNotFound, "client %s has no failures on record", key)
	}
	a.logger.Warn("break-glass admin: client unlocked", zap.String("client", key.String()), zap.String("remote", r.RemoteAddr))
	a.auditAll(nil, auditRecord{Event: auditUnlock, Client: key.String(), Detail: "from the admin API (" + r.RemoteAddr + ")"})
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(map[string]any{"unlocked": key.String()})
}

func handleRevoke(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Email string `json:"email"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	a, err := runningApp()
	if err != nil {
		return err
	}
	ended, matched := 0, 0
	var errs []error
	revoked := map[string]bool{}
	for scope, acc := range a.identities() {
		if req.Email != "" && acc.identity != normalizeEmail(req.Email) {
			continue
		}
		matched++
		revoked[scope] = true
		n, err := a.state.endSessions(scope)
		ended += n
		errs = append(errs, err)
	}
	a.auditAll(revoked, auditRecord{Event: auditRevoke, Email: req.Email, Detail: fmt.Sprintf("sessions issued until now ended, from the admin API (%s)", r.RemoteAddr)})
	if req.Email != "" && matched == 0 {
		return apiError(http.StatusNotFound, "no break_glass account has the email %q", req.Email)
	}
	if err := errors.Join(errs...); err != nil {
		return apiError(http.StatusServiceUnavailable, "ended here, but not written to storage: %v", err)
	}
	a.logger.Warn("break-glass admin: sessions revoked", zap.String("email", req.Email), zap.Int("sessions_ended", ended), zap.String("remote", r.RemoteAddr))
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(map[string]any{"revoked": ended})
}

// handleDecision approves (or refuses) an approval request as the host:
// the team's own way to decide when mail is down.
func handleDecision(approve bool) caddy.AdminHandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		var req struct {
			ID string `json:"id"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		a, err := runningApp()
		if err != nil {
			return err
		}
		id := strings.ToLower(strings.TrimSpace(req.ID))
		if !validApprovalID(id) {
			return apiError(http.StatusBadRequest, "id %q: not an approval request ID (32 hex digits, as the status lists them)", req.ID)
		}
		rec, err := a.state.approvals.update(id, decision(approvalAdmin, approve))
		switch {
		case errors.Is(err, errApprovalNotFound):
			return apiError(http.StatusNotFound, "no approval request %s (it ended over an hour ago, or never was)", id)
		case errors.Is(err, errAlreadyDecided), errors.Is(err, errPastDeadline):
			return apiError(http.StatusConflict, "approval request %s: %v (%s)", id, err, rec.state(now()))
		case err != nil:
			return apiError(http.StatusServiceUnavailable, "deciding %s: %v", id, err)
		}
		a.recordDecision(nil, rec, "admin (admin API, from "+r.RemoteAddr+")", r)
		w.Header().Set("Content-Type", "application/json")
		return json.NewEncoder(w).Encode(map[string]string{"id": rec.ID, "account": rec.Account, "decision": rec.Decision})
	}
}

// auditAll writes rec to the audit log of every handler (of the scopes
// given, or all when scopes is nil), once per file.
func (a *App) auditAll(scopes map[string]bool, rec auditRecord) {
	done := map[*auditLog]bool{}
	for _, h := range a.handlers.all() {
		if h.auditLog == nil || done[h.auditLog] || (scopes != nil && !slices.ContainsFunc(h.accounts, func(acc *account) bool { return scopes[acc.scope] })) {
			continue
		}
		done[h.auditLog] = true
		h.audit(rec)
	}
}

// Interface guard.
var _ caddy.AdminRouter = adminAPI{}
