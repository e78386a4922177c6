// Provisioning a handler: every secret and address resolved once, checked,
// and turned into what serving uses. An error names the field and never
// shows a secret.

package breakglass

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	netmail "net/mail"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/go-webauthn/webauthn/protocol"

	"go.uber.org/zap"
)

// Provision resolves secrets and addresses once, checks them, and attaches
// the shared app and Caddy's event bus.
func (h *Handler) Provision(ctx caddy.Context) error {
	appIface, err := ctx.App("break_glass")
	if err != nil {
		return fmt.Errorf("getting the break_glass app: %v", err)
	}
	eventsIface, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("getting the events app: %v", err)
	}
	h.ctx, h.events = ctx, eventsIface.(*caddyevents.App)
	return h.setup(appIface.(*App), ctx.Logger())
}

// setup is Provision once the app and the logger are known.
func (h *Handler) setup(app *App, logger *zap.Logger) error {
	h.logger, h.app, h.state = logger, app, app.state
	if h.compare == nil {
		h.compare = compareHash
	}
	repl := caddy.NewReplacer()
	// The steps of provisioning, in order; each checks and fills part of
	// what serving reads. They are functions, not methods: the handler's
	// methods are what serving uses.
	steps := []func(*Handler, *caddy.Replacer) error{setupAccounts, setupAllowList, setupAlerts, setupAudit, setupMail, setupCookies,
		setupSite, setupWebAuthn, setupApproval}
	for _, step := range steps {
		if err := step(h, repl); err != nil {
			return err
		}
	}
	app.handlers.add(h)
	if h.DevLogCode {
		h.logger.Warn("dev_log_code is on: one-time codes will be written to this log; never use it in production",
			zap.Strings("accounts", emails(h)))
	}
	return nil
}

func setupAllowList(h *Handler, _ *caddy.Replacer) error {
	ips := h.AllowedIPs
	if len(ips) == 0 {
		ips = defaultAllowedIPs
	}
	var err error
	h.allow, err = parseAllowList(ips)
	return err
}

// setupAlerts checks the alert channels and what alerts them.
func setupAlerts(h *Handler, repl *caddy.Replacer) error {
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
			h.alerts.emails = append(h.alerts.emails, addr)
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
		h.alerts.webhooks = append(h.alerts.webhooks, wh)
	}
	h.alerts.state, h.alerts.window = h.state, defaultLockout
	if h.app.Lockout > 0 {
		h.alerts.window = time.Duration(h.app.Lockout)
	}
	h.alerts.on = map[string]bool{}
	on := h.AlertOn
	if len(on) == 0 {
		on = defaultAlertOn
	}
	for _, e := range on {
		if !isAlertOn(e) {
			return fmt.Errorf("alert_on: %q: must be login, code_issued or lockout", e)
		}
		h.alerts.on[e] = true
	}
	if h.RequireAlert && (len(h.alerts.emails)+len(h.alerts.webhooks) == 0 || !h.alerts.on["login"]) {
		return errors.New("require_alert: needs an alert channel (alert_emails or alert_webhook) and login in alert_on")
	}
	return nil
}

func setupAudit(h *Handler, repl *caddy.Replacer) error {
	if h.AuditLog == "" {
		return nil
	}
	p, err := resolve(repl, h.AuditLog)
	if err != nil {
		return fmt.Errorf("audit_log: %v", err)
	}
	// The drill writes nothing to the audit log, and must not create the
	// file (perhaps as another user than Caddy's).
	if drilling.Load() {
		return nil
	}
	if h.auditLog, h.auditPath, err = openAuditLog(p); err != nil {
		return fmt.Errorf("audit_log: %v", err)
	}
	path := h.auditPath
	h.auditRelease = sync.OnceValue(func() error { return closeAuditLog(path) })
	return nil
}

// setupMail picks the mail transport: the handler's smtp, else the app's.
func setupMail(h *Handler, repl *caddy.Replacer) error {
	h.mailer = h.app.mailer
	if h.SMTP != nil {
		var err error
		if h.mailer, err = h.SMTP.provision(repl, "smtp"); err != nil {
			return err
		}
	}
	mailed := slices.ContainsFunc(h.accounts, func(acc *account) bool { return acc.factors.has(factorEmail) })
	if h.mailer == nil && !h.DevLogCode && mailed {
		return errors.New("no way to deliver the code: configure smtp (in this handler or in the global break_glass options), or dev_log_code for local development")
	}
	h.alerts.mailer = h.mailer
	if h.mailer == nil && len(h.alerts.emails) > 0 {
		return errors.New("alert_emails: needs smtp (in this handler or in the global break_glass options)")
	}
	return nil
}

// setupCookies checks cookie_path and makes the cookie names.
func setupCookies(h *Handler, _ *caddy.Replacer) error {
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

func setupSite(h *Handler, repl *caddy.Replacer) error {
	if h.SiteName == "" {
		return nil
	}
	var err error
	if h.SiteName, err = resolve(repl, h.SiteName); err != nil {
		return fmt.Errorf("site_name: %v", err)
	}
	if len(h.SiteName) > maxHostBytes || strings.ContainsFunc(h.SiteName, unicode.IsControl) {
		return fmt.Errorf("site_name: at most %d characters, and no control character", maxHostBytes)
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

// emails are the accounts' emails, in order.
func emails(h *Handler) []string {
	out := make([]string, len(h.accounts))
	for i, acc := range h.accounts {
		out[i] = acc.email
	}
	return out
}

// setupWebAuthn checks the relying party settings: when both the RP ID and
// the origins are given they must fit together; a given RP ID must be a
// domain.
func setupWebAuthn(h *Handler, _ *caddy.Replacer) error {
	h.uv = protocol.UserVerificationRequirement(h.WebAuthnUserVerification)
	if h.uv == "" {
		h.uv = protocol.VerificationPreferred
	}
	if h.WebAuthnRPID == "" && len(h.WebAuthnOrigins) == 0 {
		_, err := newRelyingParty("localhost", []string{"http://localhost"}, h.uv, "")
		return webauthnSetting(err)
	}
	if h.WebAuthnRPID == "" {
		return errors.New("webauthn_origins: needs webauthn_rp_id (the domain the origins are under)")
	}
	origins := h.WebAuthnOrigins
	if len(origins) == 0 {
		origins = []string{"https://" + h.WebAuthnRPID}
	}
	_, err := newRelyingParty(h.WebAuthnRPID, origins, h.uv, "")
	return webauthnSetting(err)
}

// webauthnSetting names the handler's option in an error of newRelyingParty.
func webauthnSetting(err error) error {
	if err == nil {
		return nil
	}
	return errors.New("webauthn_" + err.Error())
}
