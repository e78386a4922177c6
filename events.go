// The events of the door, in one table: for each kind, its log line, its
// metric, its audit line, its alert and its name on Caddy's event bus.
// record runs them in a fixed order, so that every place something happens
// is one call, and adding a kind is one row.

package breakglass

import (
	"net/netip"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The events' names, on Caddy's event bus and as the `event` of an alert
// (the drill's only as an alert: a drill is no event of a running door).
const (
	eventLogin        = "break_glass_login"
	eventLoginPending = "break_glass_login_pending"
	eventLoginRefused = "break_glass_login_refused"
	eventLoginFailed  = "break_glass_login_failed"
	eventCodeIssued   = "break_glass_code_issued"
	eventFactorWait   = "break_glass_second_factor_pending"
	eventCodeRefused  = "break_glass_code_refused"
	eventLockout      = "break_glass_lockout"
	eventSpent        = "break_glass_credential_spent"
	eventLogout       = "break_glass_logout"
	eventDrill        = "break_glass_drill"
	eventKeyEnrolled  = "break_glass_key_enrolled"
	eventKeyCloned    = "break_glass_key_clone_warning"
	eventApprovalAsk  = "break_glass_approval_requested"
	eventApproved     = "break_glass_approved"
	eventRefused      = "break_glass_refused"
	eventApprovalEnd  = "break_glass_approval_timeout"
)

type eventKind uint8

const (
	evForbidden           eventKind = iota // a client outside allowed_ips
	evLocked                               // a locked-out client asked
	evBadCSRF                              // a form without its token
	evBadCredentials                       // a wrong email or password
	evNoCode                               // a code posted with none pending: not an attempt
	evWrongCode                            // a wrong code
	evInvalidCode                          // a code no longer valid
	evInFlight                             // refused: the client's attempts are being checked
	evClientCodes                          // refused: the client had its codes for the window
	evCredentialCodes                      // refused: the account had its codes for the window
	evLimiterFull                          // refused: max_tracked_clients reached
	evHashBusy                             // refused: every hashing slot busy
	evUnavailable                          // refused: the state cannot be read or written
	evCodeIssued                           // the right password: a code is pending
	evFactorPending                        // the right password: a key or TOTP code is awaited, no code mailed
	evNoFactor                             // the right password, but no second factor this request can give
	evLockout                              // a failure locked the client out
	evLoginPending                         // require_alert: the login alert must be confirmed
	evLoginUnalerted                       // require_alert: no channel confirmed, refused
	evCredentialUsedUp                     // max_uses reached before this login
	evLogin                                // a session was issued
	evSpent                                // this login used the credential's last use
	evLogout                               // a session was ended by its operator
	evKeyRefused                           // a security key's answer was refused
	evKeyCloned                            // a key signed with a counter that did not increase
	evKeyEnrolled                          // a signed-in operator registered a key
	evDrill                                // `caddy break-glass drill`: its test alert (sent by the drill itself)
	evApprovalRequested                    // the right second factor of an account with approval: the approvers are asked
	evApproved                             // an approver (or the host) approved a request
	evRefused                              // an approver (or the host) refused a request
	evApprovalTimeout                      // a request was undecided at its deadline
	evApprovalLinkRefused                  // an approval link or form without a valid token
)

// alertLimit says how an event's alerts are held back in a burst.
type alertLimit uint8

const (
	limitNone       alertLimit = iota
	limitApp                   // lockoutAlertsPerWindow across the app
	limitCredential            // one per credential and lockout window
)

// eventSpec is what one kind of event does. An empty field is a step the
// event does not take.
type eventSpec struct {
	name     string // on Caddy's event bus and in the alert payload
	level    zapcore.Level
	msg      string
	metric   func(at time.Time)
	audit    string // the audit line's event
	severity string // of its alert; "" = never alerted
	alertOn  string // the alert_on key that turns its alert on; "" = always
	// alertAs is the alert sent in its stead (a pending login alerts as a
	// login, so that the alert the team gets is the same either way), and
	// confirm makes record wait until a channel confirmed it.
	alertAs eventKind
	confirm bool
	// notice marks what anyone allowed can cause: its alerts run apart
	// from the code mails and login alerts, so that a burst never delays
	// them.
	notice bool
	limit  alertLimit
	// failure names why an attempt failed, in the log and on the bus.
	failure string
}

func countResult(result string) func(time.Time) {
	return func(time.Time) { metricAttempts.WithLabelValues(result).Inc() }
}

var events = [...]eventSpec{
	evForbidden:      {level: zapcore.InfoLevel, msg: "break-glass request refused: client not allowed", metric: countResult(resultForbidden)},
	evLocked:         {level: zapcore.InfoLevel, msg: "break-glass request refused: client locked out", metric: countResult(resultLocked)},
	evBadCSRF:        {level: zapcore.InfoLevel, msg: "break-glass form refused: missing or wrong CSRF token"},
	evBadCredentials: {name: eventLoginFailed, level: zapcore.InfoLevel, msg: "break-glass login failed", metric: countResult(resultBadCredentials), failure: "bad_credentials"},
	evNoCode:         {level: zapcore.InfoLevel, msg: "break-glass code refused: no code pending for this sign-in", failure: "invalid_code"},
	evWrongCode:      {name: eventLoginFailed, level: zapcore.WarnLevel, msg: "break-glass wrong code", metric: countResult(resultWrongCode), failure: "wrong_code"},
	evInvalidCode:    {name: eventLoginFailed, level: zapcore.WarnLevel, msg: "break-glass wrong code", metric: countResult(resultWrongCode), failure: "invalid_code"},
	evInFlight:       {level: zapcore.InfoLevel, msg: "break-glass request refused: attempts from this client already in progress", metric: countResult(resultBusy)},
	evClientCodes:    {level: zapcore.WarnLevel, msg: "break-glass request refused: this client has had its codes for this window", metric: countResult(resultBusy)},
	evCredentialCodes: {name: eventCodeRefused, level: zapcore.WarnLevel, msg: "break-glass code refused: the credential has had its codes for this window",
		metric: countResult(resultBusy)},
	evLimiterFull: {level: zapcore.ErrorLevel, msg: "break-glass request refused: the limiter tracks as many clients as it may (max_tracked_clients)", metric: countResult(resultBusy)},
	evHashBusy:    {level: zapcore.WarnLevel, msg: "break-glass request refused: every password-checking slot is busy", metric: countResult(resultBusy)},
	evUnavailable: {level: zapcore.ErrorLevel, msg: "break-glass state unavailable: sign-in refused", metric: countResult(resultBusy)},
	evCodeIssued: {name: eventCodeIssued, level: zapcore.InfoLevel, msg: "break-glass password accepted: code issued",
		metric: countResult(resultCodeSent), audit: auditCodeIssued, severity: "warning", alertOn: "code_issued", notice: true, limit: limitCredential},
	evFactorPending: {name: eventFactorWait, level: zapcore.InfoLevel, msg: "break-glass password accepted: waiting for the second factor (no code mailed)",
		metric: countResult(resultCodeSent), audit: auditCodeIssued, severity: "warning", alertOn: "code_issued", notice: true, limit: limitCredential},
	evNoFactor: {name: eventLoginFailed, level: zapcore.WarnLevel, msg: "break-glass login refused: the password is right but this request has no second factor the account accepts",
		metric: countResult(resultBadCredentials), audit: auditRefused, failure: "no_second_factor"},
	evLockout: {name: eventLockout, level: zapcore.WarnLevel, msg: "break-glass client locked out",
		metric: func(time.Time) { metricLockouts.Inc() }, audit: auditLockout, severity: "warning", alertOn: "lockout", notice: true, limit: limitApp},
	evLoginPending: {name: eventLoginPending, level: zapcore.InfoLevel, msg: "break-glass login waiting for an alert channel to confirm (require_alert)",
		audit: auditPending, alertAs: evLogin, confirm: true},
	evLoginUnalerted: {name: eventLoginRefused, level: zapcore.ErrorLevel, msg: "break-glass login refused: require_alert is set and no alert channel confirmed delivery",
		audit: auditRefused},
	evCredentialUsedUp: {name: eventLoginRefused, level: zapcore.WarnLevel, msg: "break-glass login refused: the credential is spent (max_uses)",
		audit: auditRefused},
	evLogin: {name: eventLogin, level: zapcore.WarnLevel, msg: "break-glass login succeeded",
		metric: func(at time.Time) {
			metricAttempts.WithLabelValues(resultSuccess).Inc()
			metricLastSuccess.Set(float64(at.Unix()))
		}, audit: auditLogin, severity: "critical", alertOn: "login"},
	evSpent: {name: eventSpent, level: zapcore.WarnLevel, msg: "break-glass credential spent: max_uses reached; set a new hash",
		audit: auditSpent, severity: "critical"},
	evLogout: {name: eventLogout, level: zapcore.InfoLevel, msg: "break-glass logout", audit: auditLogout},
	evKeyRefused: {name: eventLoginFailed, level: zapcore.WarnLevel, msg: "break-glass security key refused", metric: countResult(resultWrongCode),
		failure: "webauthn_refused"},
	evKeyCloned: {name: eventKeyCloned, level: zapcore.ErrorLevel, msg: "break-glass security key refused: its sign counter did not increase (a clone?)",
		metric: countResult(resultWrongCode), audit: auditKeyCloned, severity: "critical", failure: "webauthn_clone_warning"},
	evKeyEnrolled: {name: eventKeyEnrolled, level: zapcore.WarnLevel, msg: "break-glass security key enrolled: add its line to the config",
		audit: auditKeyEnrolled, severity: "warning"},
	evDrill: {name: eventDrill, severity: "info"},
	evApprovalRequested: {name: eventApprovalAsk, level: zapcore.WarnLevel, msg: "break-glass sign-in waits for approval: the approvers were asked",
		audit: auditApprovalAsked, severity: "warning"},
	evApproved: {name: eventApproved, level: zapcore.WarnLevel, msg: "break-glass sign-in approved", audit: auditApproved, severity: "warning"},
	evRefused:  {name: eventRefused, level: zapcore.WarnLevel, msg: "break-glass sign-in refused", audit: auditApprovalRefused, severity: "warning"},
	evApprovalTimeout: {name: eventApprovalEnd, level: zapcore.WarnLevel, msg: "break-glass approval request undecided at its deadline",
		audit: auditApprovalTimeout, severity: "warning"},
	evApprovalLinkRefused: {level: zapcore.InfoLevel, msg: "break-glass approval link refused: no valid token", metric: countResult(resultForbidden)},
}

// event is one thing that happened to an attempt.
type event struct {
	kind eventKind
	// acc is the account concerned, once it is known (never from the
	// email a client typed, unless its password matched).
	acc    *account
	reason string // what the operator typed as the reason
	detail string // for the audit line
	err    error  // what went wrong, for the log
	// alerted marks an event whose alert already went (a login whose
	// pending line was confirmed under require_alert).
	alerted bool
	fields  []zap.Field // more for the log line
	// The approval request concerned, who decided it (and from where), and
	// the site it was made on (an approver's request is not the site's).
	approval *approvalRecord
	by       string
	host     string
	// extra are channels this event's alert also goes to (the approvers'
	// mails), and confirm makes record wait until one channel confirmed
	// it, as for require_alert.
	extra   []alertChannel
	confirm bool
}

// record makes an event of an attempt known, in a fixed order: the log
// line, the metric, the audit line (whose head the alert carries), the
// alerts, then Caddy's event bus. It returns whether the alert, when the
// event must be confirmed (require_alert), was delivered by a channel.
func (a *attempt) record(e event) (confirmed bool) {
	h, spec, t := a.h, &events[e.kind], now()
	email := ""
	if e.acc != nil {
		email = e.acc.email
	}
	if ce := a.log.Check(spec.level, spec.msg); ce != nil {
		fields := e.fields
		if email != "" {
			fields = append(fields, zap.String("email", email))
		}
		if spec.failure != "" {
			fields = append(fields, zap.String("reason", spec.failure))
		} else if e.reason != "" {
			fields = append(fields, zap.String("reason", e.reason))
		}
		if e.err != nil {
			fields = append(fields, zap.Error(e.err))
		}
		ce.Write(fields...)
	}
	if spec.metric != nil {
		spec.metric(t)
	}
	if email != "" && spec.name != "" {
		metricAccountEvents.WithLabelValues(email, spec.name).Inc()
	}
	var head string
	if spec.audit != "" {
		rec := auditRecord{Event: spec.audit, Email: email, Client: a.client.String(), Reason: e.reason, Detail: e.detail, By: e.by}
		if e.approval != nil {
			rec.Approval = e.approval.ID
		}
		head = h.audit(rec)
	}
	confirmed = true
	host := e.host
	if host == "" && a.r != nil && (spec.name != "" || spec.alertAs != 0 || spec.severity != "") {
		host = h.site(a.r)
	}
	alert := spec
	if spec.alertAs != 0 {
		alert = &events[spec.alertAs]
	}
	if alert.severity != "" && !e.alerted && (alert.alertOn == "" || h.alerts.on[alert.alertOn]) {
		ev := newEvent(alert.name, email, a.client.String(), host, e.reason, t)
		ev.AuditHead = head
		if e.approval != nil {
			ev = ev.withApproval(*e.approval, e.by)
		}
		if spec.confirm || e.confirm {
			confirmed = h.alerts.confirm(ev, a.log, e.extra...)
		} else {
			scope := ""
			if e.acc != nil {
				scope = e.acc.scope
			}
			h.alerts.bounded(ev, alert, scope, a.log, e.extra...)
		}
	}
	if spec.name != "" {
		h.emit(spec, a.client, host, email, e)
	}
	return confirmed
}

// emit puts an event on Caddy's event bus, for `events { on <name> … }`,
// with the client, account, host and reason as its data. Handlers run
// synchronously, as for every Caddy event.
func (h *Handler) emit(spec *eventSpec, client netip.Addr, host, account string, e event) {
	if h.events == nil || !h.events.ShouldEmit(spec.name) {
		return
	}
	data := map[string]any{"client": client.String(), "account": account, "host": host}
	if e.reason != "" {
		data["reason"] = e.reason
	}
	if spec.failure != "" {
		data["failure"] = spec.failure
	}
	if rec := e.approval; rec != nil {
		data["approval"], data["deadline"] = rec.ID, time.Unix(0, rec.Deadline).UTC().Format(time.RFC3339)
		if e.by != "" {
			data["decided_by"] = e.by
		}
	}
	h.events.Emit(h.ctx, spec.name, data)
}
