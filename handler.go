// The break_glass HTTP handler: its configuration, and the path of every
// request, top to bottom: the client, the allow-list, the session's
// pass-through, else the sign-in attempt (attempt.go).

package breakglass

import (
	"errors"
	"net/http"
	"net/netip"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/go-webauthn/webauthn/protocol"
	"go.uber.org/zap"
)

// Handler guards the routes it is placed on. A request from a client outside
// allowed_ips is refused (403). A request with a valid break-glass session
// goes on to the next handler, with the http.auth.user.* placeholders set.
// Any other request gets the login page; a right email and password send a
// 6-digit code to that account's email; the right code starts a session and
// alerts every alert channel.
type Handler struct {
	// The break-glass accounts, one per person who holds a way in (at least
	// two, held by different people, is what emergency-access practice
	// asks). Each has its email, hash, and optionally its totp_secret,
	// max_uses and sentinel_id. Instead of accounts, email and hash (and
	// totp_secret, max_uses, sentinel_id) at the top make one account.
	Accounts []AccountConfig `json:"accounts,omitempty"`

	// The one account's email address: what the operator types, and where
	// codes go. Placeholders are resolved at load.
	Email string `json:"email,omitempty"`

	// The one account's password hash, as `caddy hash-password` prints it
	// (bcrypt or argon2id), or base64-encoded. Placeholders ({env.*},
	// {file.*}) are resolved at load.
	Hash string `json:"hash,omitempty"`

	// The one account's {http.auth.user.sentinel_id} (see AccountConfig).
	// Default: "0".
	SentinelID string `json:"sentinel_id,omitempty"`

	// The clients that may use this login: exact IPs and CIDRs. The client
	// is the connection's address, or the client behind a proxy listed in
	// the server's trusted_proxies. Default: 127.0.0.1 and ::1.
	AllowedIPs []string `json:"allowed_ips,omitempty"`

	// Addresses that get an alert email after each successful login, one
	// mail each. Needs an SMTP transport. An empty list (as opposed to none)
	// is warned about at load.
	AlertEmails *[]string `json:"alert_emails,omitempty"`

	// A URL (http or https) that gets a JSON POST for each alert: event,
	// ip, timestamp, severity, message. Placeholders are resolved at load.
	// The same as one generic entry of alert_webhooks.
	AlertWebhook string `json:"alert_webhook,omitempty"`

	// Alert webhooks, each with its payload format, headers and signing
	// secret.
	AlertWebhooks []WebhookConfig `json:"alert_webhooks,omitempty"`

	// Which events alert every channel: "login" (a session was issued),
	// "code_issued" (the right password was given: a code is pending) and
	// "lockout" (a client was locked out; once per lockout). Default:
	// login and lockout.
	AlertOn []string `json:"alert_on,omitempty"`

	// Make the login form's "reason / incident" field mandatory. It is
	// always offered; the reason goes into the success log line, every alert
	// of that login and the audit log.
	RequireReason bool `json:"require_reason,omitempty"`

	// Issue the session only once at least one alert channel confirmed the
	// login alert (SMTP accepted the mail, or a webhook answered 2xx)
	// within 10 s; otherwise the login is refused. Default: alerts never
	// hold up a login.
	RequireAlert bool `json:"require_alert,omitempty"`

	// The one account's base32 TOTP secret (RFC 6238: SHA-1, 6 digits, 30 s), e.g.
	// {env.BREAK_GLASS_TOTP}: the code page then also accepts the current
	// authenticator code, each time step once, so that access still works
	// when mail is down. Make one with `caddy break-glass totp`.
	TOTPSecret string `json:"totp_secret,omitempty"`

	// A file that gets one JSON line per event (code issued, login, lockout,
	// logout, admin unlock and revoke, and every request made under a
	// break-glass session), each carrying the SHA-256 of the line before.
	// Check it with `caddy break-glass verify-audit <path>`.
	AuditLog string `json:"audit_log,omitempty"`

	// The one account's max_uses: after this many successful logins with
	// its hash, the hash stops working until it is changed. Default: 0,
	// unlimited.
	MaxUses int `json:"max_uses,omitempty"`

	// The mail transport of this handler; replaces the app's smtp.
	SMTP *SMTPConfig `json:"smtp,omitempty"`

	// The path of the break-glass cookies (session and sign-in), e.g.
	// /admin when only /admin* is guarded on a site that serves other
	// routes: a browser then sends them only to /admin and below, never to
	// the site's other routes and their upstreams. Every guarded path
	// should be under it. Default: /. Over TLS with the path /, the cookies
	// carry the __Host- prefix (this host only, Secure).
	CookiePath string `json:"cookie_path,omitempty"`

	// The site's name in mails and alerts. Default: the request's host
	// (the Host header the route matched), at most 253 characters.
	SiteName string `json:"site_name,omitempty"`

	// The WebAuthn relying party ID the accounts' security keys are bound
	// to: a domain, the site's own or one it is under (e.g. example.com for
	// admin.example.com). A key works only under the RP ID it was enrolled
	// with. Default: the host the request was made to.
	WebAuthnRPID string `json:"webauthn_rp_id,omitempty"`

	// The origins (scheme://host[:port]) a security key's answer may come
	// from. Default: the origin the request was made to.
	WebAuthnOrigins []string `json:"webauthn_origins,omitempty"`

	// Whether a security key must verify its user (a PIN or biometric):
	// "required", "preferred" or "discouraged". Default: preferred.
	WebAuthnUserVerification string `json:"webauthn_user_verification,omitempty"`

	// Second-person control: once an account's password and second factor
	// are right, the sign-in waits until an approver approves it (or, with
	// on_timeout grant, until its deadline passes unrefused). An account's
	// own approval block replaces this one for that account. Default: none.
	Approval *ApprovalConfig `json:"approval,omitempty"`

	// Development only: write each code (and each approval link) to the
	// log at WARN, so the flow can be tried without a mail server.
	DevLogCode bool `json:"dev_log_code,omitempty"`

	app      *App
	state    *state
	logger   *zap.Logger
	ctx      caddy.Context
	events   *caddyevents.App // Caddy's event bus (nil in unit tests)
	accounts []*account
	byScope  map[string]*account // the accounts by their scope
	// classes are the kinds of hash the accounts use, each once: every
	// sign-in compares one hash of each (see checkPassword).
	classes      []*hashClass
	hashMem      int64 // the most memory one sign-in's comparisons take at once
	allow        []netip.Prefix
	alerts       alerts
	auditLog     *auditLog
	auditPath    string
	auditRelease func() error // once
	mailer       *mailer
	cookiePath   string
	// cookie names over plain HTTP and over TLS (with __Host- when the
	// path is /), made once so that the pass-through path allocates none.
	plainNames, tlsNames cookieNames

	// compare checks a password against a hash (compareHash); tests
	// replace it to count comparisons.
	compare func(hash, password []byte) error
	// uv is webauthn_user_verification, checked.
	uv protocol.UserVerificationRequirement
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.break_glass",
		New: func() caddy.Module { return new(Handler) },
	}
}

// ServeHTTP guards one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	client, ok := clientAddr(r)
	if !ok {
		return caddyhttp.Error(http.StatusBadRequest, errors.New("break_glass: no client address"))
	}
	// As Caddy's IP matchers do: before the TLS handshake is complete (0-RTT
	// early data), the client address is not proven, so nothing is decided.
	if r.TLS != nil && !r.TLS.HandshakeComplete {
		return caddyhttp.Error(http.StatusTooEarly, errors.New("break_glass: TLS handshake not complete, client address not verified"))
	}
	action := actionOf(r)
	if action == actionApproval {
		// An approver's link: from anywhere, and nothing without its token.
		return h.respond(w, r, h.decisionPage(w, r, client))
	}
	if !allowed(h.allow, client) {
		a := h.newAttempt(r, client)
		a.record(event{kind: evForbidden})
		return h.respond(w, r, a.message(http.StatusForbidden, "forbidden", "Access not allowed", ""))
	}
	if value, ok := cookieValue(r.Header, h.names(r).session); ok {
		// The path of every request of a signed-in operator: one cookie, one
		// HMAC, one map lookup, four placeholders. It allocates only what
		// the placeholders and the cookie stripping need.
		_, issued, scope, _, err := h.state.sessions.open(value, client)
		acc := h.byScope[scope]
		if err == nil && acc == nil {
			err = errSessionScope
		}
		if err == nil {
			if action != "" {
				if s, err := h.state.sessions.verify(value, client, scope); err == nil {
					a := h.newAttempt(r, client)
					if action == actionEnroll {
						return h.respond(w, r, a.enroll(w, acc, s))
					}
					return h.respond(w, r, a.logout(acc, s))
				}
			}
			repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
			repl.Set("http.auth.user.id", acc.emailValue)
			repl.Set("http.auth.user.sentinel_id", acc.sentinelValue)
			repl.Set("http.auth.user.break_glass", "true")
			repl.Set("http.auth.user.authenticated_at", issued)
			stripOwnCookies(r.Header)
			if h.auditLog != nil {
				return h.serveAudited(w, r, client.String(), acc, next)
			}
			return next.ServeHTTP(w, r)
		}
		h.logger.Debug("break-glass session cookie rejected", zap.String("client_ip", client.String()), zap.String("reason", err.Error()))
	}
	return h.respond(w, r, h.newAttempt(r, client).run(w, action))
}

// Cleanup lets go of the audit log. The field stays set: requests of the old
// config still in flight (a long download, a websocket) may write to it;
// once the last config lets go, such a write fails and is logged.
func (h *Handler) Cleanup() error {
	if h.auditRelease == nil {
		return nil
	}
	return h.auditRelease()
}

// statusRecorder notes the status of a response made under a session, for
// the audit log.
type statusRecorder struct {
	*caddyhttp.ResponseWriterWrapper
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		s.status = code
	}
	s.ResponseWriterWrapper.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriterWrapper.Write(b)
}

// serveAudited passes a signed-in request on and writes it to the audit log
// with its status.
func (h *Handler) serveAudited(w http.ResponseWriter, r *http.Request, client string, acc *account, next caddyhttp.Handler) error {
	rec := &statusRecorder{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	path := originalURL(r).Path
	err := next.ServeHTTP(rec, r)
	status := rec.status
	if err != nil {
		var he caddyhttp.HandlerError
		if errors.As(err, &he) && he.StatusCode != 0 {
			status = he.StatusCode
		} else {
			status = http.StatusInternalServerError
		}
	} else if status == 0 {
		status = http.StatusOK
	}
	h.audit(auditRecord{Event: auditRequest, Email: acc.email, Client: client, Method: r.Method, Path: path, Status: status})
	return err
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
