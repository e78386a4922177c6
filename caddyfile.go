// Caddyfile support: the break_glass handler directive and the break_glass
// global option (the app).

package breakglass

import (
	"strconv"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("break_glass", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("break_glass", httpcaddyfile.Before, "basic_auth")
	httpcaddyfile.RegisterGlobalOption("break_glass", parseGlobalOption)
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var bg Handler
	err := bg.UnmarshalCaddyfile(h.Dispenser)
	return &bg, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	break_glass [<matcher>] {
//		account <address> {
//			hash <bcrypt or argon2id hash>
//			totp_secret <base32>
//			max_uses <n>
//			sentinel_id <id>
//			second_factor webauthn|client_cert|totp|email...
//			webauthn_key <name> <id> <public_key> [aaguid <uuid>] [backup_eligible]
//			client_cert <sha256 fingerprint...>
//			client_cert_subject <subject, as Go prints it>
//			approval { ... }   # replaces the handler's for this account
//		}
//		email <address>            # or, for one account:
//		hash <hash>                # email and hash (totp_secret, max_uses,
//		sentinel_id <id>           # sentinel_id) at the top
//		allowed_ips <ip|cidr...>
//		alert_emails [<address...>]
//		alert_webhook <url> {
//			format generic|slack|discord
//			header <name> <value>
//			secret <value>
//		}
//		alert_on login|code_issued|lockout...
//		require_reason
//		require_alert
//		totp_secret <base32>
//		audit_log <path>
//		max_uses <n>
//		smtp <host:port> { ... }
//		webauthn_rp_id <domain>
//		webauthn_origins <scheme://host[:port]...>
//		webauthn_user_verification required|preferred|discouraged
//		approval {
//			approvers <email...>
//			wait <duration>
//			on_timeout grant|deny
//			url <https://site/path/>
//		}
//		dev_log_code
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	var err error
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "email":
			if err := oneArg(d, &h.Email); err != nil {
				return err
			}
		case "hash":
			if err := oneArg(d, &h.Hash); err != nil {
				return err
			}
		case "sentinel_id":
			if err := oneArg(d, &h.SentinelID); err != nil {
				return err
			}
		case "account":
			acc, err := unmarshalAccount(d)
			if err != nil {
				return err
			}
			h.Accounts = append(h.Accounts, acc)
		case "second_factor", "client_cert", "client_cert_subject", "webauthn_key":
			return d.Errf("%s: goes in an account block: account <email> { hash …; %s … }", d.Val(), d.Val())
		case "allowed_ips":
			ips := d.RemainingArgs()
			if len(ips) == 0 {
				return d.Errf("allowed_ips: needs at least one IP or CIDR")
			}
			h.AllowedIPs = append(h.AllowedIPs, ips...)
		case "alert_emails":
			list := d.RemainingArgs()
			if h.AlertEmails != nil {
				list = append(*h.AlertEmails, list...)
			}
			if list == nil {
				list = []string{}
			}
			h.AlertEmails = &list
		case "alert_webhook":
			var wh WebhookConfig
			if err := wh.unmarshalCaddyfile(d); err != nil {
				return err
			}
			h.AlertWebhooks = append(h.AlertWebhooks, wh)
		case "alert_on":
			events := d.RemainingArgs()
			if len(events) == 0 {
				return d.Errf("alert_on: needs at least one of login, code_issued, lockout")
			}
			for _, e := range events {
				if !isAlertOn(e) {
					return d.Errf("alert_on: %q: must be login, code_issued or lockout", e)
				}
			}
			h.AlertOn = append(h.AlertOn, events...)
		case "require_reason", "require_alert":
			name := d.Val()
			if d.NextArg() {
				return d.Errf("%s: takes no argument", name)
			}
			if name == "require_reason" {
				h.RequireReason = true
			} else {
				h.RequireAlert = true
			}
		case "totp_secret":
			if err := oneArg(d, &h.TOTPSecret); err != nil {
				return err
			}
		case "audit_log":
			if err := oneArg(d, &h.AuditLog); err != nil {
				return err
			}
		case "cookie_path":
			if err := oneArg(d, &h.CookiePath); err != nil {
				return err
			}
		case "webauthn_rp_id":
			if err := oneArg(d, &h.WebAuthnRPID); err != nil {
				return err
			}
		case "webauthn_origins":
			if err := listArg(d, &h.WebAuthnOrigins); err != nil {
				return err
			}
		case "webauthn_user_verification":
			if err := oneArg(d, &h.WebAuthnUserVerification); err != nil {
				return err
			}
		case "site_name":
			if err := oneArg(d, &h.SiteName); err != nil {
				return err
			}
		case "max_uses":
			if err := countArg(d, &h.MaxUses); err != nil {
				return err
			}
		case "smtp":
			if h.SMTP != nil {
				return d.Err("smtp: given twice")
			}
			h.SMTP = new(SMTPConfig)
			if err := h.SMTP.unmarshalCaddyfile(d); err != nil {
				return err
			}
		case "approval":
			if h.Approval != nil {
				return d.Err("approval: given twice")
			}
			if h.Approval, err = unmarshalApproval(d); err != nil {
				return err
			}
		case "dev_log_code":
			if d.NextArg() {
				return d.Errf("dev_log_code: takes no argument")
			}
			h.DevLogCode = true
		default:
			return d.Errf("unknown subdirective %q", d.Val())
		}
	}
	return nil
}

// parseGlobalOption sets up the app from the global break_glass option:
//
//	break_glass {
//		max_attempts <n>
//		max_concurrent_hashes <n>
//		max_tracked_clients <n>
//		codes_per_client <n>
//		codes_per_credential <n>
//		lockout <duration>
//		code_ttl <duration>
//		session_ttl <duration>
//		state memory|storage
//		refresh_interval <duration>
//		smtp <host:port> { ... }
//	}
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	app := new(App)
	d.Next() // option name
	if existing != nil {
		return nil, d.Err("break_glass: the global option is given twice; merge the blocks")
	}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "max_attempts":
			if err := countArg(d, &app.MaxAttempts); err != nil {
				return nil, err
			}
		case "max_concurrent_hashes":
			if err := countArg(d, &app.MaxConcurrentHashes); err != nil {
				return nil, err
			}
		case "max_hash_memory":
			var v string
			if err := oneArg(d, &v); err != nil {
				return nil, err
			}
			n, err := humanize.ParseBytes(v)
			if err != nil || n == 0 || n > 1<<40 {
				return nil, d.Errf("max_hash_memory: %q: must be a size such as 256MiB", v)
			}
			app.MaxHashMemory = int64(n)
		case "max_tracked_clients":
			if err := countArg(d, &app.MaxTrackedClients); err != nil {
				return nil, err
			}
		case "codes_per_client":
			if err := countArg(d, &app.CodesPerClient); err != nil {
				return nil, err
			}
		case "codes_per_credential":
			if err := countArg(d, &app.CodesPerCredential); err != nil {
				return nil, err
			}
		case "lockout":
			if err := durationArg(d, &app.Lockout); err != nil {
				return nil, err
			}
		case "code_ttl":
			if err := durationArg(d, &app.CodeTTL); err != nil {
				return nil, err
			}
		case "session_ttl":
			if err := durationArg(d, &app.SessionTTL); err != nil {
				return nil, err
			}
		case "refresh_interval":
			if err := durationArg(d, &app.RefreshInterval); err != nil {
				return nil, err
			}
		case "state":
			if err := oneArg(d, &app.State); err != nil {
				return nil, err
			}
			if app.State != "memory" && app.State != "storage" {
				return nil, d.Errf("state: %q: must be memory or storage", app.State)
			}
		case "smtp":
			if app.SMTP != nil {
				return nil, d.Err("smtp: given twice")
			}
			app.SMTP = new(SMTPConfig)
			if err := app.SMTP.unmarshalCaddyfile(d); err != nil {
				return nil, err
			}
		default:
			return nil, d.Errf("unknown break_glass option %q", d.Val())
		}
	}
	return httpcaddyfile.App{Name: "break_glass", Value: caddyconfig.JSON(app, nil)}, nil
}

// unmarshalCaddyfile reads `smtp <host:port> { ... }` at the dispenser.
func (c *SMTPConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.Errf("smtp: needs the server address, host:port")
	}
	c.Address = d.Val()
	if d.NextArg() {
		return d.Errf("smtp: takes one address, then a block")
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "username":
			if err := oneArg(d, &c.Username); err != nil {
				return err
			}
		case "password":
			if err := oneArg(d, &c.Password); err != nil {
				return err
			}
		case "from":
			if err := oneArg(d, &c.From); err != nil {
				return err
			}
		case "tls":
			if err := oneArg(d, &c.TLS); err != nil {
				return err
			}
			switch c.TLS {
			case "starttls", "implicit", "none":
			default:
				return d.Errf("smtp: tls %q: must be starttls, implicit or none", c.TLS)
			}
		case "ca_file":
			if err := oneArg(d, &c.CAFile); err != nil {
				return err
			}
		case "insecure_skip_verify":
			if d.NextArg() {
				return d.Errf("smtp: insecure_skip_verify: takes no argument")
			}
			c.InsecureSkipVerify = true
		case "timeout":
			if err := durationArg(d, &c.Timeout); err != nil {
				return err
			}
		default:
			return d.Errf("smtp: unknown subdirective %q", d.Val())
		}
	}
	return nil
}

// oneArg reads exactly one argument of the current subdirective into dst.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	name := d.Val()
	if !d.NextArg() {
		return d.Errf("%s: needs a value", name)
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.Errf("%s: takes one value, got more", name)
	}
	return nil
}

// unmarshalAccount reads `account <email> { hash …; totp_secret …; max_uses
// …; sentinel_id … }`.
func unmarshalAccount(d *caddyfile.Dispenser) (AccountConfig, error) {
	var c AccountConfig
	if !d.NextArg() {
		return c, d.Errf("account: needs the account's email")
	}
	c.Email = d.Val()
	if d.NextArg() {
		return c, d.Errf("account %s: takes one email, then a block", c.Email)
	}
	for nest := d.Nesting(); d.NextBlock(nest); {
		var err error
		switch d.Val() {
		case "hash":
			err = oneArg(d, &c.Hash)
		case "totp_secret":
			err = oneArg(d, &c.TOTPSecret)
		case "max_uses":
			err = countArg(d, &c.MaxUses)
		case "sentinel_id":
			err = oneArg(d, &c.SentinelID)
		case "second_factor":
			err = listArg(d, &c.SecondFactor)
		case "webauthn_key":
			var k WebAuthnKeyConfig
			if k, err = unmarshalWebAuthnKey(d); err == nil {
				c.WebAuthnKeys = append(c.WebAuthnKeys, k)
			}
		case "client_cert":
			err = listArg(d, &c.ClientCerts)
		case "client_cert_subject":
			var subj string
			if err = oneArg(d, &subj); err == nil {
				c.ClientCertSubjects = append(c.ClientCertSubjects, subj)
			}
		case "approval":
			if c.Approval != nil {
				return c, d.Errf("account %s: approval: given twice", c.Email)
			}
			c.Approval, err = unmarshalApproval(d)
		default:
			err = d.Errf("account %s: unknown option %q (hash, totp_secret, max_uses, sentinel_id, second_factor, webauthn_key, client_cert, client_cert_subject, approval)", c.Email, d.Val())
		}
		if err != nil {
			return c, err
		}
	}
	if c.Hash == "" {
		return c, d.Errf("account %s: needs a hash", c.Email)
	}
	return c, nil
}

// unmarshalApproval reads `approval { approvers …; wait …; on_timeout …; url … }`.
func unmarshalApproval(d *caddyfile.Dispenser) (*ApprovalConfig, error) {
	c := new(ApprovalConfig)
	if d.NextArg() {
		return nil, d.Errf("approval: takes a block, not %q", d.Val())
	}
	for nest := d.Nesting(); d.NextBlock(nest); {
		var err error
		switch d.Val() {
		case "approvers":
			err = listArg(d, &c.Approvers)
		case "wait":
			err = durationArg(d, &c.Wait)
		case "on_timeout":
			if err = oneArg(d, &c.OnTimeout); err == nil && c.OnTimeout != onTimeoutGrant && c.OnTimeout != onTimeoutDeny {
				err = d.Errf("approval: on_timeout %q: must be grant or deny", c.OnTimeout)
			}
		case "url":
			err = oneArg(d, &c.URL)
		default:
			err = d.Errf("approval: unknown option %q (approvers, wait, on_timeout, url)", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

// listArg appends one or more arguments to dst.
func listArg(d *caddyfile.Dispenser, dst *[]string) error {
	name := d.Val()
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.Errf("%s: needs at least one value", name)
	}
	*dst = append(*dst, args...)
	return nil
}

// countArg reads one whole number of at least 1.
func countArg(d *caddyfile.Dispenser, dst *int) error {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return d.Errf("%s: %q: must be a whole number of at least 1", name, s)
	}
	*dst = n
	return nil
}

// durationArg reads one positive duration in Caddy's syntax (e.g. 15m, 1h30m, 2d).
func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return d.Errf("%s: %q: %v", name, s, err)
	}
	if dur <= 0 {
		return d.Errf("%s: %q: must be a positive duration", name, s)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*Handler)(nil)
