// The break_glass HTTP handler: the allow-list, the session check on every
// request, and the two-step login (password, then emailed code).

package breakglass

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	netmail "net/mail"

	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"
)

const (
	flowCookie = "break_glass_flow"
	// maxFormBytes bounds a login or code form body; anything larger is 413.
	maxFormBytes = 8 << 10
	// bcryptMaxPassword is the most bcrypt reads of a password; a longer one
	// is refused (bcrypt would silently ignore the rest).
	bcryptMaxPassword = 72
)

// Handler guards the routes it is placed on. A request from a client outside
// allowed_ips is refused (403). A request with a valid break-glass session
// goes on to the next handler, with the http.auth.user.* placeholders set.
// Any other request gets the login page; a right email and password send a
// 6-digit code to the break-glass email; the right code starts a session and
// alerts every alert channel.
type Handler struct {
	// The break-glass identity: the email address an operator types, and the
	// address the codes are sent to. Required. Placeholders are resolved at
	// load.
	Email string `json:"email,omitempty"`

	// The bcrypt hash of the break-glass password, e.g. from
	// `caddy hash-password`. Required. Placeholders ({env.*}, {file.*}) are
	// resolved at load. A base64-encoded hash is accepted too.
	Hash string `json:"hash,omitempty"`

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

	// A base32 TOTP secret (RFC 6238: SHA-1, 6 digits, 30 s), e.g.
	// {env.BREAK_GLASS_TOTP}: the code page then also accepts the current
	// authenticator code, each time step once, so that access still works
	// when mail is down. Make one with `caddy break-glass totp`.
	TOTPSecret string `json:"totp_secret,omitempty"`

	// A file that gets one JSON line per event (code issued, login, lockout,
	// logout, admin unlock and revoke, and every request made under a
	// break-glass session), each carrying the SHA-256 of the line before.
	// Check it with `caddy break-glass verify-audit <path>`.
	AuditLog string `json:"audit_log,omitempty"`

	// After this many successful logins with the configured hash, the hash
	// stops working until it is changed. Default: 0, unlimited.
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

	// Development only: write each code to the log at WARN, so the flow can
	// be tried without a mail server.
	DevLogCode bool `json:"dev_log_code,omitempty"`

	app         *App
	state       *state
	logger      *zap.Logger
	email       string   // resolved Email, as configured
	emailValue  any      // email, boxed once for the placeholder
	identity    string   // normalised email
	emailDigest [32]byte // of identity, for a constant-time comparison
	// scope names the credential (email and hash) that sessions and codes
	// are bound to: a session or code of another handler, or of this one
	// before its hash was changed, is not accepted.
	scope string
	// credential names the same pair without the state's key, so that what
	// is kept in the config's storage (max_uses counts, the last TOTP step)
	// outlives a restart of state memory, whose key is new at each start.
	credential   string
	hash         []byte
	fakeHash     []byte
	allow        []netip.Prefix
	alertEmails  []string
	webhooks     []*webhook
	alertOn      map[string]bool
	totpKey      []byte
	auditLog     *auditLog
	auditPath    string
	auditRelease func() error // once
	mailer       *mailer
	cookiePath   string
	// cookie names over plain HTTP and over TLS (with __Host- when the
	// path is /), made once so that the pass-through path allocates none.
	plainNames, tlsNames cookieNames

	// compare checks a password against a bcrypt hash; tests replace it to
	// count comparisons.
	compare func(hash, password []byte) error
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.break_glass",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision resolves secrets and addresses once, checks them, and attaches
// the shared app.
func (h *Handler) Provision(ctx caddy.Context) error {
	appIface, err := ctx.App("break_glass")
	if err != nil {
		return fmt.Errorf("getting the break_glass app: %v", err)
	}
	return h.setup(appIface.(*App), ctx.Logger())
}

// setup is Provision once the app and the logger are known.
func (h *Handler) setup(app *App, logger *zap.Logger) error {
	var err error
	h.logger = logger
	h.app = app
	h.state = app.state
	if h.compare == nil {
		h.compare = bcrypt.CompareHashAndPassword
	}
	repl := caddy.NewReplacer()

	if h.Email == "" {
		return errors.New("email: required")
	}
	email, err := resolve(repl, h.Email)
	if err != nil {
		return fmt.Errorf("email: %v", err)
	}
	addr, err := netmail.ParseAddress(email)
	if err != nil || addr.Address != email {
		return fmt.Errorf("email %q: not a plain email address", email)
	}
	h.email, h.emailValue = email, email
	h.identity = normalizeEmail(email)
	h.emailDigest = sha256.Sum256([]byte(h.identity))

	if h.Hash == "" {
		return errors.New("hash: required (make one with `caddy hash-password`)")
	}
	hash, err := resolve(repl, h.Hash)
	if err != nil {
		return fmt.Errorf("hash: %v", err)
	}
	if h.hash, err = parseBcrypt(hash); err != nil {
		return err
	}
	if h.fakeHash, err = fakeHashFor(h.hash); err != nil {
		return err
	}
	h.scope = h.state.scopeOf(h.identity, h.hash)
	h.credential = credentialID(h.identity, h.hash)
	app.handlers.add(h)

	ips := h.AllowedIPs
	if len(ips) == 0 {
		ips = defaultAllowedIPs
	}
	if h.allow, err = parseAllowList(ips); err != nil {
		return err
	}

	if h.AlertEmails != nil {
		if len(*h.AlertEmails) == 0 {
			h.logger.Warn("alert_emails is empty: no alert email will be sent after a break-glass login")
		}
		for _, a := range *h.AlertEmails {
			addr, err := resolve(repl, a)
			if err != nil {
				return fmt.Errorf("alert_emails: %v", err)
			}
			if _, err := netmail.ParseAddress(addr); err != nil {
				return fmt.Errorf("alert_emails: %q: not an email address", addr)
			}
			h.alertEmails = append(h.alertEmails, addr)
		}
	}
	hooks := h.AlertWebhooks
	if h.AlertWebhook != "" {
		hooks = append([]WebhookConfig{{URL: h.AlertWebhook}}, hooks...)
	}
	for _, c := range hooks {
		wh, err := c.provision(repl, "alert_webhook")
		if err != nil {
			return err
		}
		h.webhooks = append(h.webhooks, wh)
	}
	h.alertOn = map[string]bool{}
	on := h.AlertOn
	if len(on) == 0 {
		on = defaultAlertOn
	}
	for _, e := range on {
		if _, ok := alertOnEvents[e]; !ok {
			return fmt.Errorf("alert_on: %q: must be login, code_issued or lockout", e)
		}
		h.alertOn[e] = true
	}
	if h.RequireAlert && (len(h.alertEmails)+len(h.webhooks) == 0 || !h.alertOn["login"]) {
		return errors.New("require_alert: needs an alert channel (alert_emails or alert_webhook) and login in alert_on")
	}
	if h.TOTPSecret != "" {
		sec, err := resolve(repl, h.TOTPSecret)
		if err != nil {
			return fmt.Errorf("totp_secret: %v", err)
		}
		if h.totpKey, err = decodeTOTPSecret(sec); err != nil {
			return err
		}
	}
	if h.MaxUses < 0 {
		return fmt.Errorf("max_uses: must be at least 1, got %d", h.MaxUses)
	}
	if h.AuditLog != "" {
		p, err := resolve(repl, h.AuditLog)
		if err != nil {
			return fmt.Errorf("audit_log: %v", err)
		}
		// The drill writes nothing to the audit log, and must not create
		// the file (perhaps as another user than Caddy's).
		if !drilling.Load() {
			if h.auditLog, h.auditPath, err = openAuditLog(p); err != nil {
				return fmt.Errorf("audit_log: %v", err)
			}
			path := h.auditPath
			h.auditRelease = sync.OnceValue(func() error { return closeAuditLog(path) })
		}
	}

	switch {
	case h.SMTP != nil:
		if h.mailer, err = h.SMTP.provision(repl, "smtp"); err != nil {
			return err
		}
	default:
		h.mailer = h.app.mailer
	}
	if err := h.setupCookies(); err != nil {
		return err
	}
	if h.SiteName != "" {
		if h.SiteName, err = resolve(repl, h.SiteName); err != nil {
			return fmt.Errorf("site_name: %v", err)
		}
		if len(h.SiteName) > maxHostBytes || strings.ContainsFunc(h.SiteName, unicode.IsControl) {
			return fmt.Errorf("site_name: at most %d characters, and no control character", maxHostBytes)
		}
	}
	if h.mailer == nil && !h.DevLogCode {
		return errors.New("no way to deliver the code: configure smtp (in this handler or in the global break_glass options), or dev_log_code for local development")
	}
	if h.mailer == nil && len(h.alertEmails) > 0 {
		return errors.New("alert_emails: needs smtp (in this handler or in the global break_glass options)")
	}
	if h.DevLogCode {
		h.logger.Warn("dev_log_code is on: one-time codes will be written to this log; never use it in production",
			zap.String("email", h.email))
	}
	return nil
}

// credentialID is a stable name of an identity and hash (the hash is
// salted, so the name tells nothing of the password).
func credentialID(identity string, hash []byte) string {
	sum := sha256.Sum256([]byte("break_glass/credential\x00" + identity + "\x00" + string(hash)))
	return hex.EncodeToString(sum[:16])
}

func normalizeEmail(s string) string {
	return strings.ToLower(strings.TrimSpace(s))
}

// parseBcrypt accepts a bcrypt hash as `caddy hash-password` prints it, or
// base64-encoded. The error never shows the value.
func parseBcrypt(s string) ([]byte, error) {
	b := []byte(s)
	if !strings.HasPrefix(s, "$2") {
		if dec, err := base64.StdEncoding.DecodeString(s); err == nil {
			b = dec
		}
	}
	if _, err := bcrypt.Cost(b); err != nil {
		return nil, errors.New("hash: not a bcrypt hash")
	}
	return b, nil
}

// fakeHashes caches, per cost, a hash of a random password: a wrong email is
// compared against it so that it costs exactly what a wrong password costs.
var fakeHashes sync.Map // int → []byte

func fakeHashFor(hash []byte) ([]byte, error) {
	cost, err := bcrypt.Cost(hash)
	if err != nil {
		return nil, err
	}
	if v, ok := fakeHashes.Load(cost); ok {
		return v.([]byte), nil
	}
	pw := make([]byte, 32)
	if _, err := rand.Read(pw); err != nil {
		return nil, err
	}
	fake, err := bcrypt.GenerateFromPassword(pw, cost)
	if err != nil {
		return nil, err
	}
	v, _ := fakeHashes.LoadOrStore(cost, fake)
	return v.([]byte), nil
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
	if !allowed(h.allow, client) {
		metricAttempts.WithLabelValues(resultForbidden).Inc()
		h.logger.Info("break-glass request refused: client not allowed", zap.String("client_ip", client.String()))
		return render(w, r, http.StatusForbidden, h.page(r, client, "forbidden", "Access not allowed"))
	}
	logout := isLogout(r)
	if value, ok := cookieValue(r.Header, h.names(r).session); ok {
		// The path of every request of a signed-in operator: one cookie, one
		// HMAC, three placeholders. It allocates only what the placeholders
		// and the cookie stripping need.
		_, issued, _, err := h.state.sessions.check(value, client, h.scope)
		if err == nil {
			if logout {
				s, err := h.state.sessions.verify(value, client, h.scope)
				if err == nil {
					return h.logout(w, r, client, s)
				}
			}
			repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
			repl.Set("http.auth.user.id", h.emailValue)
			repl.Set("http.auth.user.break_glass", "true")
			repl.Set("http.auth.user.authenticated_at", issued)
			stripOwnCookies(r.Header)
			if h.auditLog != nil {
				return h.serveAudited(w, r, client.String(), next)
			}
			return next.ServeHTTP(w, r)
		}
		h.logger.Debug("break-glass session cookie rejected", zap.String("client_ip", client.String()), zap.String("reason", err.Error()))
	}
	return h.serveLogin(w, r, client, logout)
}

// serveLogin serves the login flow to an allowed client without a session.
func (h *Handler) serveLogin(w http.ResponseWriter, r *http.Request, client netip.Addr, loggedOut bool) error {
	log := h.logger.With(zap.String("client_ip", client.String()))
	key := limiterKey(client)
	// Before any parsing or hashing: a locked-out client costs nothing.
	until, locked, err := h.state.limiter.lockedUntil(key)
	if err != nil {
		return h.unavailable(w, r, client, log, err)
	}
	if locked {
		metricAttempts.WithLabelValues(resultLocked).Inc()
		log.Info("break-glass request refused: client locked out", zap.Time("locked_until", until))
		return h.renderLocked(w, r, client, until)
	}

	if r.Method != http.MethodPost {
		flow := h.flowFrom(r)
		if exp, ok := h.state.codes.pending(h.scope, flow, client); ok {
			return h.renderCode(w, r, client, flow, exp, "", http.StatusOK)
		}
		if spent, err := h.spent(); err != nil {
			return h.unavailable(w, r, client, log, err)
		} else if spent {
			return h.renderSpent(w, r, client)
		}
		log.Debug("break-glass login page served")
		p := h.page(r, client, "login", "Break-glass sign-in")
		if loggedOut {
			p.Notice = "You are signed out."
		}
		if rem := h.state.limiter.remaining(key, h.app.lim); rem < h.app.MaxAttempts {
			p.Error = fmt.Sprintf("There were failed attempts from your address: %s left before it is locked out.", plural(rem, "attempt"))
		}
		return h.renderLogin(w, r, p, http.StatusUnauthorized)
	}

	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return render(w, r, http.StatusRequestEntityTooLarge, h.message(r, client, "Request too large", "The form was larger than a sign-in form can be."))
		}
		return render(w, r, http.StatusBadRequest, h.message(r, client, "Bad request", "The form could not be read."))
	}
	step := r.PostForm.Get("break_glass_step")
	if step == "" {
		// A POST meant for the guarded application, without a session.
		return h.renderLogin(w, r, h.page(r, client, "login", "Break-glass sign-in"), http.StatusUnauthorized)
	}
	flow := h.flowFrom(r)
	if flow == "" || !h.validCSRF(flow, r.PostForm.Get("csrf_token")) {
		log.Info("break-glass form refused: missing or wrong CSRF token")
		p := h.page(r, client, "login", "Break-glass sign-in")
		p.Error = "This form expired or did not come from this page. Please try again."
		return h.renderLogin(w, r, p, http.StatusForbidden)
	}
	switch step {
	case "login":
		return h.stepPassword(w, r, client, log)
	case "code":
		return h.stepCode(w, r, client, flow, log)
	case "restart":
		if err := h.state.codes.cancel(h.scope, flow); err != nil {
			return h.unavailable(w, r, client, log, err)
		}
		http.Redirect(w, r, selfURL(r), http.StatusSeeOther)
		return nil
	default:
		return render(w, r, http.StatusBadRequest, h.message(r, client, "Bad request", "Unknown form step."))
	}
}

// stepPassword checks email and password with exactly one bcrypt comparison
// whatever is wrong, so that the time taken tells nothing.
func (h *Handler) stepPassword(w http.ResponseWriter, r *http.Request, client netip.Addr, log *zap.Logger) error {
	email := r.PostForm.Get("email")
	password := []byte(r.PostForm.Get("password"))
	digest := sha256.Sum256([]byte(normalizeEmail(email)))
	emailOK := subtle.ConstantTimeCompare(digest[:], h.emailDigest[:]) == 1
	hash := h.hash
	if !emailOK {
		hash = h.fakeHash
	}
	tooLong := len(password) > bcryptMaxPassword
	if tooLong {
		password = password[:bcryptMaxPassword]
	}
	// The reason is checked before anything costs: it is not an attempt.
	reason := cleanReason(r.PostForm.Get("reason"))
	if msg := h.reasonProblem(reason); msg != "" {
		p := h.page(r, client, "login", "Break-glass sign-in")
		p.Email, p.Reason, p.Error = email, reason, msg
		return h.renderLogin(w, r, p, http.StatusBadRequest)
	}
	if spent, err := h.spent(); err != nil {
		return h.unavailable(w, r, client, log, err)
	} else if spent {
		return h.renderSpent(w, r, client)
	}
	// Claim the attempt before hashing, so that attempts sent in parallel
	// cannot add up to more than max_attempts; then wait for a hashing slot,
	// served before clients with more failures.
	c, ok := h.claim(w, r, client, attemptPassword, log)
	if !ok {
		return nil
	}
	settled := false
	defer h.settleOnPanic(client, attemptPassword, &settled)
	if !h.app.acquireHash(r.Context(), c.failures) {
		settled = true
		if _, _, err := h.settle(client, attemptPassword, outcomeNone); err != nil {
			return h.unavailable(w, r, client, log, err)
		}
		log.Warn("break-glass request refused: every password-checking slot is busy", zap.Int("max_concurrent_hashes", h.app.MaxConcurrentHashes))
		return h.busy(w, r, client, http.StatusServiceUnavailable, 2, "Busy",
			"Too many sign-in attempts are being checked right now. Wait a moment and try again; this did not count as a failed attempt.")
	}
	defer h.app.releaseHash()
	err := h.compare(hash, password)
	failed := err != nil || !emailOK || tooLong
	if failed {
		settled = true
		remaining, lockedUntil, err := h.settle(client, attemptPassword, outcomeFailed)
		if err != nil {
			return h.unavailable(w, r, client, log, err)
		}
		return h.failed(w, r, client, log, "bad_credentials", remaining, lockedUntil, func(p *page, remaining int) int {
			p.Kind, p.Title = "login", "Break-glass sign-in"
			p.Email, p.Reason = email, reason
			p.Error = fmt.Sprintf("Wrong email or password. %s left before this address is locked out.", plural(remaining, "attempt"))
			return http.StatusUnauthorized
		})
	}

	code, err := newCode()
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	flow, err := newFlowID()
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	// The code is charged to the client (codes per client and window) and
	// to the credential (codes per credential and window).
	exp, perr := h.state.codes.put(h.scope, code, flow, client, time.Duration(h.app.CodeTTL), reason, h.app.codeLim)
	settleAs := outcomeCode
	if perr != nil {
		settleAs = outcomeNone
	}
	settled = true
	if _, _, err := h.settle(client, attemptPassword, settleAs); err != nil || (perr != nil && !errors.Is(perr, errCodeBudget)) {
		return h.unavailable(w, r, client, log, errors.Join(perr, err))
	}
	if perr != nil {
		log.Warn("break-glass code refused: the credential has had its codes for this window", zap.String("email", h.email),
			zap.Int("codes_per_window", h.app.codeLim.perCredential), zap.Duration("window", h.app.codeLim.window))
		return h.busy(w, r, client, http.StatusTooManyRequests, int(math.Ceil(h.app.codeLim.window.Seconds())), "Too many codes",
			"The password is right, but this break-glass account has been sent as many codes as it may in a short time. If that was not you, someone else has the password: tell your security team. Try again later.")
	}
	metricAttempts.WithLabelValues(resultCodeSent).Inc()
	log.Info("break-glass password accepted: code issued", zap.String("email", h.email), zap.Time("code_expires", exp), zap.String("reason", reason))
	head := h.audit(auditRecord{Event: auditCodeIssued, Client: client.String(), Reason: reason})
	if h.alertOn["code_issued"] {
		ev := newEvent(eventCodeIssued, h.email, client.String(), h.site(r), reason, now())
		ev.AuditHead = head
		h.alertCodeIssued(ev, log) // one per credential and window: a burst raises one alert
	}
	if h.DevLogCode {
		log.Warn("break-glass code (dev_log_code)", zap.String("email", h.email), zap.String("code", code), zap.Time("code_expires", exp))
	}
	if h.mailer != nil {
		msg := codeMail(h.email, code, client.String(), h.site(r), exp)
		h.deliver("code_email", log.With(zap.String("recipient", h.email)),
			func(ctx context.Context) error { return h.mailer.send(ctx, msg) })
	}
	h.setFlowCookie(w, r, flow)
	http.Redirect(w, r, selfURL(r), http.StatusSeeOther)
	return nil
}

// stepCode checks the emailed code. Every code that does not sign in counts
// as a failed attempt for the client.
func (h *Handler) stepCode(w http.ResponseWriter, r *http.Request, client netip.Addr, flow string, log *zap.Logger) error {
	code := strings.ReplaceAll(strings.TrimSpace(r.PostForm.Get("code")), " ", "")
	// Without a code pending for this browser and client there is nothing
	// to guess: the post costs nothing and is not tracked, so that such
	// posts can never fill the limiter.
	if _, ok := h.state.codes.pending(h.scope, flow, client); !ok {
		log.Info("break-glass code refused: no code pending for this sign-in", zap.String("reason", "invalid_code"))
		p := h.page(r, client, "login", "Break-glass sign-in")
		p.Error = "That code is no longer valid (expired, already used, or too many wrong tries). Sign in again."
		return h.renderLogin(w, r, p, http.StatusUnauthorized)
	}
	if _, ok := h.claim(w, r, client, attemptCode, log); !ok {
		return nil
	}
	settled := false
	defer h.settleOnPanic(client, attemptCode, &settled)
	res, reason, verr := h.state.codes.verify(h.scope, flow, client, code, h.totpCheck())
	settled = true
	o := outcomeNone
	if verr == nil && res != codeOK {
		o = outcomeFailed
	}
	remaining, lockedUntil, err := h.settle(client, attemptCode, o)
	if verr != nil || err != nil {
		return h.unavailable(w, r, client, log, errors.Join(verr, err))
	}
	switch res {
	case codeOK:
		return h.succeed(w, r, client, log, reason)
	case codeWrong:
		return h.failed(w, r, client, log, "wrong_code", remaining, lockedUntil, func(p *page, remaining int) int {
			exp, _ := h.state.codes.pending(h.scope, flow, client)
			p.Kind, p.Title, p.Expires = "code", "Enter your code", formatTime(exp)
			p.TOTP = h.totpKey != nil
			p.Error = fmt.Sprintf("Wrong code. %s left before this address is locked out.", plural(remaining, "attempt"))
			return http.StatusUnauthorized
		})
	default: // voided, expired, used, replaced, or not this login's
		return h.failed(w, r, client, log, "invalid_code", remaining, lockedUntil, func(p *page, remaining int) int {
			p.Kind, p.Title = "login", "Break-glass sign-in"
			p.Error = fmt.Sprintf("That code is no longer valid (expired, already used, or too many wrong tries). Sign in again. %s left.", plural(remaining, "attempt"))
			return http.StatusUnauthorized
		})
	}
}

// claim reserves an attempt for the client in the limiter. When it cannot,
// it serves the refusal (429) and returns false.
func (h *Handler) claim(w http.ResponseWriter, r *http.Request, client netip.Addr, kind attemptKind, log *zap.Logger) (claim, bool) {
	c, err := h.state.limiter.reserve(limiterKey(client), kind, h.app.lim)
	if err != nil {
		_ = h.unavailable(w, r, client, log, err)
		return c, false
	}
	switch c.res {
	case reserved:
		return c, true
	case refusedLocked:
		metricAttempts.WithLabelValues(resultLocked).Inc()
		err = h.renderLocked(w, r, client, c.until)
	case refusedInFlight:
		log.Info("break-glass request refused: attempts from this client already in progress")
		err = h.busy(w, r, client, http.StatusTooManyRequests, 1, "Please wait",
			"Other sign-in attempts from your address are still being checked. Wait a moment and try again.")
	case refusedCodes:
		secs := max(int(math.Ceil(c.until.Sub(now()).Seconds())), 1)
		log.Warn("break-glass request refused: this client has had its codes for this window",
			zap.Int("codes_per_client", h.app.lim.codesPerClient), zap.Time("until", c.until))
		err = h.busy(w, r, client, http.StatusTooManyRequests, secs, "Too many codes",
			fmt.Sprintf("Your address has been sent %s in a short time, as many as it may. Use the last code you got, or try again after %s.",
				plural(h.app.lim.codesPerClient, "code"), formatTime(c.until)))
	case refusedFull:
		log.Error("break-glass request refused: the limiter tracks as many clients as it may (max_tracked_clients)")
		err = h.busy(w, r, client, http.StatusTooManyRequests, 60, "Please wait",
			"Too many addresses are signing in right now. Try again in a minute.")
	}
	if err != nil {
		h.logger.Debug("writing a refusal", zap.Error(err))
	}
	return c, false
}

// settle ends the attempt claimed by claim, counting what it did.
func (h *Handler) settle(client netip.Addr, kind attemptKind, o outcome) (remaining int, lockedUntil time.Time, err error) {
	return h.state.limiter.settle(limiterKey(client), kind, o, h.app.lim)
}

// settleOnPanic ends a claimed attempt that a panic interrupted (in a
// comparer or a storage module), so that its reservation, or its storage
// lock, is never left behind; the panic goes on.
func (h *Handler) settleOnPanic(client netip.Addr, kind attemptKind, settled *bool) {
	if *settled {
		return
	}
	if _, _, err := h.settle(client, kind, outcomeNone); err != nil {
		h.logger.Error("break-glass: releasing an interrupted attempt", zap.String("client_ip", client.String()), zap.Error(err))
	}
}

// unavailable answers 503 when the state cannot be read or written (a
// storage backend is down): sign-ins fail closed, nothing is forgiven.
func (h *Handler) unavailable(w http.ResponseWriter, r *http.Request, client netip.Addr, log *zap.Logger, err error) error {
	log.Error("break-glass state unavailable: sign-in refused", zap.Error(err))
	return h.busy(w, r, client, http.StatusServiceUnavailable, 10, "Temporarily unavailable",
		"Break-glass sign-in cannot be checked right now. Try again in a moment; sessions already open keep working.")
}

// busy refuses an attempt that could not be checked (not a failure, not
// counted): status with Retry-After and a short page.
func (h *Handler) busy(w http.ResponseWriter, r *http.Request, client netip.Addr, status, retryAfter int, title, text string) error {
	metricAttempts.WithLabelValues(resultBusy).Inc()
	w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	return render(w, r, status, h.message(r, client, title, text))
}

// failed logs a failure the limiter has counted and serves either the page
// built by retry or, when this failure locked the client out, the locked page.
func (h *Handler) failed(w http.ResponseWriter, r *http.Request, client netip.Addr, log *zap.Logger, reason string,
	remaining int, lockedUntil time.Time, retry func(p *page, remaining int) int) error {
	if reason == "bad_credentials" {
		metricAttempts.WithLabelValues(resultBadCredentials).Inc()
		log.Info("break-glass login failed", zap.String("reason", reason), zap.Int("attempts_remaining", remaining))
	} else {
		metricAttempts.WithLabelValues(resultWrongCode).Inc()
		log.Warn("break-glass wrong code", zap.String("reason", reason), zap.Int("attempts_remaining", remaining))
	}
	if !lockedUntil.IsZero() {
		// Only the failure that locked the client out gets here: the alert
		// goes once per lockout.
		metricLockouts.Inc()
		log.Warn("break-glass client locked out", zap.Time("locked_until", lockedUntil), zap.Int("max_attempts", h.app.MaxAttempts))
		head := h.audit(auditRecord{Event: auditLockout, Client: client.String(), Detail: "until " + lockedUntil.UTC().Format(time.RFC3339)})
		if h.alertOn["lockout"] {
			ev := newEvent(eventLockout, h.email, client.String(), h.site(r), "", now())
			ev.AuditHead = head
			h.alertLockout(ev, log)
		}
		return h.renderLocked(w, r, client, lockedUntil)
	}
	p := h.page(r, client, "", "")
	status := retry(&p, remaining)
	if p.Kind == "login" {
		return h.renderLogin(w, r, p, status)
	}
	p.CSRF = h.csrfToken(h.flowFrom(r))
	return render(w, r, status, p)
}

// requireAlertWait bounds how long a login with require_alert waits for an
// alert channel to confirm.
var requireAlertWait = 10 * time.Second

// succeed starts a session after the right code.
func (h *Handler) succeed(w http.ResponseWriter, r *http.Request, client netip.Addr, log *zap.Logger, reason string) error {
	if h.state.sessions.full() {
		log.Error("break-glass session refused: too many revoked sessions are remembered; they expire with their sessions")
		return render(w, r, http.StatusServiceUnavailable, h.message(r, client, "Try again later",
			"No new session can be started right now. Try again later, or ask your security team."))
	}
	uses := 0
	if h.MaxUses > 0 {
		n, ok, err := h.app.uses.claim(h.credential, h.MaxUses)
		if err != nil {
			return h.unavailable(w, r, client, log, err)
		}
		if !ok {
			h.audit(auditRecord{Event: auditRefused, Client: client.String(), Reason: reason, Detail: "credential spent"})
			return h.renderSpent(w, r, client)
		}
		uses = n
	}
	t := now()
	ev := newEvent(eventLogin, h.email, client.String(), h.site(r), reason, t)
	if h.RequireAlert {
		// The alert must cover this login: its head is that of a line
		// written for it.
		ev.AuditHead = h.audit(auditRecord{Event: auditPending, Client: client.String(), Reason: reason,
			Detail: "waiting for an alert channel to confirm (require_alert)"})
		if !h.confirmAlerts(ev, log) {
			if uses > 0 {
				if err := h.app.uses.release(h.credential); err != nil {
					log.Error("break-glass: giving back the use of a refused login", zap.Error(err))
				}
			}
			h.audit(auditRecord{Event: auditRefused, Client: client.String(), Reason: reason, Detail: "no alert channel confirmed delivery"})
			log.Error("break-glass login refused: require_alert is set and no alert channel confirmed delivery",
				zap.String("email", h.email), zap.Duration("waited_up_to", requireAlertWait))
			h.clearFlowCookie(w, r)
			return render(w, r, http.StatusServiceUnavailable, h.message(r, client, "Access refused: nobody could be told",
				"Your password and code were right, but this break-glass login must alert the security team first, and no alert channel (email or webhook) confirmed delivery. No session was started. Try again in a moment, or reach your security team another way."))
		}
	}
	// A sign-in forgives no failure: the client's limit holds however many
	// credentials it signs in with.
	id, err := newSessionID()
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	ttl := time.Duration(h.app.SessionTTL)
	s := session{ID: id, Issued: t, Expires: t.Add(ttl), Client: client, Scope: h.scope}
	http.SetCookie(w, h.cookie(r, h.names(r).session, h.state.sessions.encode(s), int(math.Ceil(ttl.Seconds()))))
	h.clearFlowCookie(w, r)
	h.state.sessions.track(s)
	metricAttempts.WithLabelValues(resultSuccess).Inc()
	metricLastSuccess.Set(float64(t.Unix()))
	head := h.audit(auditRecord{Event: auditLogin, Client: client.String(), Reason: reason, Detail: "session until " + s.Expires.UTC().Format(time.RFC3339)})
	log.Warn("break-glass login succeeded", zap.String("email", h.email), zap.String("reason", reason), zap.Time("session_expires", s.Expires))
	if !h.RequireAlert && h.alertOn["login"] {
		ev.AuditHead = head
		h.sendAlerts(ev, log)
	}
	if h.MaxUses > 0 && uses >= h.MaxUses {
		log.Warn("break-glass credential spent: max_uses reached; set a new hash", zap.String("email", h.email), zap.Int("max_uses", h.MaxUses))
		spent := newEvent(eventSpent, h.email, client.String(), h.site(r), reason, t)
		spent.AuditHead = h.audit(auditRecord{Event: auditSpent, Client: client.String(), Detail: fmt.Sprintf("after %d uses", uses)})
		h.sendAlerts(spent, log)
	}
	http.Redirect(w, r, selfURL(r), http.StatusSeeOther)
	return nil
}

// spent reports whether the credential has had its max_uses logins.
func (h *Handler) spent() (bool, error) {
	if h.MaxUses == 0 {
		return false, nil
	}
	n, err := h.app.uses.count(h.credential)
	return n >= h.MaxUses, err
}

func (h *Handler) renderSpent(w http.ResponseWriter, r *http.Request, client netip.Addr) error {
	p := h.page(r, client, "message", "Credential spent")
	p.Error = fmt.Sprintf("This break-glass credential has been used %s, as many times as it may (max_uses). It no longer works: ask your security team to set a new break-glass password.", plural(h.MaxUses, "time"))
	return render(w, r, http.StatusForbidden, p)
}

// maxReason is the longest reason the login form takes, in characters.
const maxReason = 200

// cleanReason trims the reason, turns control characters (line breaks,
// tabs, escapes) into spaces, so it stays one line in logs and mails, and
// drops the bidirectional controls, which would make an alert read
// otherwise than it is.
func cleanReason(s string) string {
	return strings.TrimSpace(cleanText(s))
}

// reasonProblem says what is wrong with a reason, or "".
func (h *Handler) reasonProblem(reason string) string {
	switch {
	case !utf8.ValidString(reason):
		return "The reason is not valid text."
	case utf8.RuneCountInString(reason) > maxReason:
		return fmt.Sprintf("The reason is too long: at most %d characters.", maxReason)
	case h.RequireReason && reason == "":
		return "Give the reason for this emergency login (the incident, or why normal access is not enough)."
	}
	return ""
}

// logout revokes the session server-side, so a replayed cookie stops working.
func (h *Handler) logout(w http.ResponseWriter, r *http.Request, client netip.Addr, s session) error {
	if err := h.state.revoke(s); err != nil {
		h.logger.Error("break-glass logout not written to storage: other instances accept the session until it expires",
			zap.String("client_ip", client.String()), zap.Error(err))
	}
	http.SetCookie(w, h.cookie(r, h.names(r).session, "", -1))
	h.logger.Info("break-glass logout", zap.String("client_ip", client.String()), zap.String("email", h.email))
	h.audit(auditRecord{Event: auditLogout, Client: client.String()})
	p := h.page(r, client, "login", "Break-glass sign-in")
	p.Notice = "You are signed out."
	return h.renderLogin(w, r, p, http.StatusOK)
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

// page fills what every page shows.
func (h *Handler) page(r *http.Request, client netip.Addr, kind, title string) page {
	return page{Kind: kind, Title: title, Action: selfURL(r), Client: client.String(), Host: hostOnly(r.Host)}
}

func (h *Handler) message(r *http.Request, client netip.Addr, title, text string) page {
	p := h.page(r, client, "message", title)
	p.Error = text
	return p
}

// renderLogin serves the login page with a CSRF token, starting a new flow
// (the step-1 cookie) when the request has none.
func (h *Handler) renderLogin(w http.ResponseWriter, r *http.Request, p page, status int) error {
	flow := h.flowFrom(r)
	if flow == "" {
		var err error
		if flow, err = newFlowID(); err != nil {
			return caddyhttp.Error(http.StatusInternalServerError, err)
		}
		h.setFlowCookie(w, r, flow)
	}
	p.Kind = "login"
	p.CSRF = h.csrfToken(flow)
	p.ReasonRequired = h.RequireReason
	return render(w, r, status, p)
}

func (h *Handler) renderCode(w http.ResponseWriter, r *http.Request, client netip.Addr, flow string, exp time.Time, errMsg string, status int) error {
	p := h.page(r, client, "code", "Enter your code")
	p.CSRF = h.csrfToken(flow)
	p.TOTP = h.totpKey != nil
	p.Expires = formatTime(exp)
	p.Error = errMsg
	return render(w, r, status, p)
}

func (h *Handler) renderLocked(w http.ResponseWriter, r *http.Request, client netip.Addr, until time.Time) error {
	secs := int(math.Ceil(until.Sub(now()).Seconds()))
	w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
	p := h.page(r, client, "locked", "Temporarily locked out")
	p.Until = formatTime(until)
	return render(w, r, http.StatusTooManyRequests, p)
}

// The flow cookie identifies one browser's sign-in: the CSRF token is its
// MAC, and a code is bound to the flow that asked for it. A new flow is made
// at each right password, so a code never outlives the login it belongs to.

func newFlowID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// flowFrom returns the request's flow ID, or "" if it has none or a
// malformed one.
func (h *Handler) flowFrom(r *http.Request) string {
	c, err := r.Cookie(h.names(r).flow)
	if err != nil || len(c.Value) != 32 {
		return ""
	}
	if _, err := hex.DecodeString(c.Value); err != nil {
		return ""
	}
	return c.Value
}

func (h *Handler) setFlowCookie(w http.ResponseWriter, r *http.Request, flow string) {
	http.SetCookie(w, h.cookie(r, h.names(r).flow, flow, 0))
}

func (h *Handler) clearFlowCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, h.cookie(r, h.names(r).flow, "", -1))
}

// cookieNames are the names of the handler's two cookies.
type cookieNames struct{ session, flow string }

// hostPrefix is the cookie prefix a browser accepts only from the host that
// set it, over TLS, with Path=/ and no Domain: a sibling subdomain cannot
// plant or overwrite such a cookie.
const hostPrefix = "__Host-"

// setupCookies checks cookie_path and makes the cookie names.
func (h *Handler) setupCookies() error {
	h.cookiePath = "/"
	if h.CookiePath != "" {
		p := h.CookiePath
		if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, ";,\\ \"") || strings.ContainsFunc(p, unicode.IsControl) || len(p) > 1024 {
			return fmt.Errorf("cookie_path %q: must be a path starting with /, without spaces, quotes, commas or semicolons", p)
		}
		h.cookiePath = p
	}
	h.plainNames = cookieNames{sessionCookie, flowCookie}
	h.tlsNames = h.plainNames
	if h.cookiePath == "/" {
		h.tlsNames = cookieNames{hostPrefix + sessionCookie, hostPrefix + flowCookie}
	}
	return nil
}

// names are the cookie names of this request.
func (h *Handler) names(r *http.Request) *cookieNames {
	if r.TLS != nil {
		return &h.tlsNames
	}
	return &h.plainNames
}

// cookie makes every cookie the handler sets, so that their attributes
// cannot drift apart. maxAge 0 is a browser-session cookie, -1 deletes it.
func (h *Handler) cookie(r *http.Request, name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: h.cookiePath, MaxAge: maxAge,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode}
}

func (h *Handler) csrfToken(flow string) string {
	m := hmac.New(sha256.New, h.state.csrfKey)
	m.Write([]byte(flow))
	return b64.EncodeToString(m.Sum(nil))
}

func (h *Handler) validCSRF(flow, token string) bool {
	return hmac.Equal([]byte(token), []byte(h.csrfToken(flow)))
}

// selfURL is the URL the operator asked for, as a path on this site: forms
// post back to it and a sign-in ends there. Leading slashes and backslashes
// collapse to one slash, so it can never be read as another host
// ("//evil.example", "/\evil.example"). The logout parameter is dropped.
func selfURL(r *http.Request) string {
	u := originalURL(r)
	p := "/" + strings.TrimLeft(u.EscapedPath(), "/\\")
	q := u.RawQuery
	if strings.Contains(q, "break_glass=") {
		v := u.Query()
		v.Del("break_glass")
		q = v.Encode()
	}
	if q != "" {
		p += "?" + q
	}
	return p
}

// originalURL is the URL as the client sent it, before any rewrite.
func originalURL(r *http.Request) *url.URL {
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		return orig.URL
	}
	return r.URL
}

// isLogout reports whether the request asks to end the session: the query
// parameter break_glass=logout on any guarded URL.
func isLogout(r *http.Request) bool {
	if !strings.Contains(r.URL.RawQuery, "break_glass=") {
		u := originalURL(r) // only if a rewrite could have dropped it
		if u == r.URL || !strings.Contains(u.RawQuery, "break_glass=") {
			return false
		}
	}
	return originalURL(r).Query().Get("break_glass") == "logout"
}

// cookieValue finds a cookie in the request headers without parsing (and
// allocating) the others.
func cookieValue(h http.Header, name string) (string, bool) {
	for _, line := range h["Cookie"] {
		for len(line) > 0 {
			var part string
			if i := strings.IndexByte(line, ';'); i >= 0 {
				part, line = line[:i], line[i+1:]
			} else {
				part, line = line, ""
			}
			part = strings.TrimSpace(part)
			if len(part) > len(name) && part[len(name)] == '=' && part[:len(name)] == name {
				v := part[len(name)+1:]
				if len(v) > 1 && v[0] == '"' && v[len(v)-1] == '"' {
					v = v[1 : len(v)-1]
				}
				return v, true
			}
		}
	}
	return "", false
}

// stripOwnCookies removes this handler's cookies from a request before it
// goes on, so that no upstream (or its logs) ever sees a session cookie.
func stripOwnCookies(h http.Header) {
	lines := h["Cookie"]
	kept := lines[:0]
	for _, line := range lines {
		if !strings.Contains(line, "break_glass_") {
			kept = append(kept, line)
			continue
		}
		var b strings.Builder
		for part := range strings.SplitSeq(line, ";") {
			part = strings.TrimSpace(part)
			if part == "" || strings.HasPrefix(part, "break_glass_") || strings.HasPrefix(part, hostPrefix+"break_glass_") {
				continue
			}
			if b.Len() == 0 {
				b.Grow(len(line))
			} else {
				b.WriteString("; ")
			}
			b.WriteString(part)
		}
		if b.Len() > 0 {
			kept = append(kept, b.String())
		}
	}
	if len(kept) == 0 {
		h.Del("Cookie")
		return
	}
	h["Cookie"] = kept
}

// site names the site in mails and alerts: site_name, else the host the
// route matched (the Host header, not the TLS server name, which a client
// may send for another site of the same certificate; on a catch-all site
// the client chooses either), cleaned and cut to the length of a DNS name.
func (h *Handler) site(r *http.Request) string {
	if h.SiteName != "" {
		return h.SiteName
	}
	return safeHost(hostOnly(r.Host))
}

// hostOnly is the request's host without a port, for pages and alerts.
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
