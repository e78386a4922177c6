// Alerts: what the team is told of an event (the webhook payload, the alert
// mail and their wording), and where it goes (one mail per recipient, each
// webhook).

package breakglass

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"
)

// defaultAlertOn is what alerts when alert_on is not set.
var defaultAlertOn = []string{"login", "lockout"}

// isAlertOn reports whether name is an alert_on name: one the events table
// gives an event.
func isAlertOn(name string) bool {
	for _, s := range events {
		if s.alertOn != "" && s.alertOn == name {
			return true
		}
	}
	return false
}

// alertEvent is the webhook payload, and what the alert email says.
type alertEvent struct {
	Event     string `json:"event"`
	IP        string `json:"ip"`
	Timestamp string `json:"timestamp"`
	Severity  string `json:"severity"`
	Message   string `json:"message"`
	Email     string `json:"email"`
	// Account is the account concerned (its email, as Email): who came in.
	Account string `json:"account,omitempty"`
	Host    string `json:"host"`
	// Reason is what the operator typed in the login form's reason field.
	Reason string `json:"reason,omitempty"`
	// AuditHead is the SHA-256 of the audit log's last line once this
	// event was written to it (with audit_log).
	AuditHead string `json:"audit_head,omitempty"`
	// Approval is the approval request the event is of (second-person
	// control).
	Approval *alertApproval `json:"approval,omitempty"`

	at time.Time // when it happened, for the mail
}

// alertApproval is what an alert says of an approval request.
type alertApproval struct {
	ID        string   `json:"id"`
	Deadline  string   `json:"deadline"`   // RFC 3339, UTC
	OnTimeout string   `json:"on_timeout"` // grant or deny
	Approvers []string `json:"approvers"`
	DecidedBy string   `json:"decided_by,omitempty"` // an approver (and from where), or admin
}

// withApproval is ev of the approval request rec, decided by by (if it
// was); the message says what the team must know of it.
func (ev alertEvent) withApproval(rec approvalRecord, by string) alertEvent {
	deadline := time.Unix(0, rec.Deadline).UTC()
	ev.Approval = &alertApproval{ID: rec.ID, Deadline: deadline.Format(time.RFC3339), OnTimeout: rec.OnTimeout,
		Approvers: rec.Approvers, DecidedBy: by}
	switch {
	case by != "":
		ev.Message += ". Decided by " + by
	case ev.Event == eventApprovalAsk && rec.OnTimeout == onTimeoutGrant:
		ev.Message += ". Unless an approver refuses by " + ev.Approval.Deadline + ", it is granted (on_timeout grant)"
	case ev.Event == eventApprovalAsk:
		ev.Message += ". Unless an approver approves by " + ev.Approval.Deadline + ", it is refused (on_timeout deny)"
	}
	return ev
}

// alertWording is what the alerts of one event say: the message (with
// %[1]s the account, %[2]s the client IP, %[3]s the host, %[4]s the time),
// and the mail's subject (%[1]s the host, %[2]s the client IP), heading and
// advice.
type alertWording struct {
	message, subject, heading, advice string
}

var alertWordings = map[string]alertWording{
	eventLogin: {
		message: "Break-glass login succeeded for %[1]s from %[2]s on %[3]s at %[4]s",
		subject: "[break-glass] Emergency login used on %[1]s from %[2]s",
		heading: "Someone used the break-glass emergency login.",
		advice: "If this was not a planned drill or a known incident, treat it as a security " +
			"incident: find out who used it, and rotate the break-glass password.",
	},
	eventCodeIssued: {
		message: "Break-glass password accepted for %[1]s from %[2]s on %[3]s at %[4]s: a one-time code is pending",
		subject: "[break-glass] Password accepted on %[1]s from %[2]s: a code is pending",
		heading: "Someone gave the right break-glass password: a one-time code is pending.",
		advice: "If this is not a known incident, someone knows the break-glass password: rotate it " +
			"now (the pending code stops working with the old hash).",
	},
	eventFactorWait: {
		message: "Break-glass password accepted for %[1]s from %[2]s on %[3]s at %[4]s: the sign-in waits for its second factor",
		subject: "[break-glass] Password accepted on %[1]s from %[2]s: a sign-in waits for its second factor",
		heading: "Someone gave the right break-glass password: the sign-in waits for its second factor.",
		advice: "If this is not a known incident, someone knows the break-glass password: rotate it " +
			"now (the pending sign-in stops working with the old hash).",
	},
	eventLockout: {
		message: "Break-glass client %[2]s locked out after too many failed attempts on %[3]s at %[4]s",
		subject: "[break-glass] Client %[2]s locked out on %[1]s",
		heading: "A client was locked out of the break-glass login after too many failed attempts.",
		advice:  "If nobody on the team was trying to sign in, someone is guessing: find out who.",
	},
	eventSpent: {
		message: "The break-glass credential of %[1]s is spent (max_uses reached) after a login from %[2]s on %[3]s at %[4]s: set a new hash",
		subject: "[break-glass] Credential spent on %[1]s after a login from %[2]s",
		heading: "The break-glass credential reached its max_uses and no longer works.",
		advice:  "Set a new break-glass password (a new hash) so that the door can be used again.",
	},
	eventKeyEnrolled: {
		message: "A security key was enrolled for break-glass account %[1]s from %[2]s on %[3]s at %[4]s",
		subject: "[break-glass] Security key enrolled on %[1]s from %[2]s",
		heading: "A break-glass operator registered a new security key.",
		advice: "The key works only once its line is added to the config. If no custodian is enrolling a key " +
			"now, someone is signed in through the break-glass door: revoke its sessions and rotate the password.",
	},
	eventKeyCloned: {
		message: "A security key of break-glass account %[1]s was refused on %[3]s at %[4]s: its signature counter did not increase, so a copy of it may exist (client %[2]s)",
		subject: "[break-glass] Possible cloned security key on %[1]s (client %[2]s)",
		heading: "A break-glass security key signed with a counter that did not increase: it may have been copied.",
		advice: "The key stays refused. Find out where the key is; remove its webauthn_key line and enrol a new key; " +
			"treat the password as known.",
	},
	eventApprovalAsk: {
		message: "Break-glass sign-in of %[1]s from %[2]s on %[3]s at %[4]s waits for approval: its password and second factor were right",
		subject: "[break-glass] Sign-in waiting for approval on %[1]s from %[2]s",
		heading: "Someone signed in through the break-glass door; the sign-in waits for an approver.",
		advice: "The approvers were mailed a link to decide. If nobody on the team is using the door now, " +
			"someone has the password and second factor: have an approver refuse, and rotate the credential.",
	},
	eventApproved: {
		message: "Break-glass sign-in of %[1]s from %[2]s on %[3]s was approved at %[4]s",
		subject: "[break-glass] Sign-in approved on %[1]s for %[2]s",
		heading: "A break-glass sign-in waiting for approval was approved.",
		advice:  "The operator's session starts now. If the approval was not meant, revoke its sessions (caddy break-glass revoke).",
	},
	eventRefused: {
		message: "Break-glass sign-in of %[1]s from %[2]s on %[3]s was refused at %[4]s",
		subject: "[break-glass] Sign-in refused on %[1]s for %[2]s",
		heading: "A break-glass sign-in waiting for approval was refused: no session was issued.",
		advice:  "If the person signing in was not on the team, they have the password and second factor: rotate them.",
	},
	eventApprovalEnd: {
		message: "Break-glass sign-in of %[1]s from %[2]s on %[3]s was undecided at its deadline (%[4]s)",
		subject: "[break-glass] Approval request timed out on %[1]s (client %[2]s)",
		heading: "A break-glass sign-in waiting for approval reached its deadline with no decision.",
		advice: "With on_timeout grant the session is issued now; with deny it is refused. " +
			"Make sure the approvers can be reached: their mails may not be arriving.",
	},
	eventDrill: {
		message: "DRILL: this is a test of the break-glass alerts for %[1]s, run from %[3]s at %[4]s. Nobody signed in; no action is needed.",
		subject: "[break-glass DRILL] Test alert from %[1]s: nobody signed in",
		heading: "DRILL: this is a test of the break-glass alerts. Nobody signed in.",
		advice:  "Nothing to do: this mail shows that break-glass alerts reach you.",
	},
}

// newEvent makes the alert of one event. Each value is cleaned and bounded
// (see alertbounds.go) before the message is made of it, so that a huge
// Host header cannot push the reason out of the message.
func newEvent(name, identity, ip, host, reason string, at time.Time) alertEvent {
	ts := at.UTC().Format(time.RFC3339)
	identity, ip, host, reason = safeEmail(identity), safeIP(ip), safeHost(host), safeReason(reason)
	msg := fmt.Sprintf(alertWordings[name].message, identity, ip, host, ts)
	if reason != "" {
		msg += ". Reason: " + reason
	}
	return alertEvent{Event: name, IP: ip, Timestamp: ts, Severity: severityOf(name), Message: msg,
		Email: identity, Account: identity, Host: host, Reason: reason, at: at}
}

// drillEvent is the alert of a drill: a test, no one signed in.
func drillEvent(identity, host string, at time.Time) alertEvent {
	ev := newEvent(eventDrill, identity, "", host, "", at)
	ev.IP = ""
	return ev
}

// severityOf is the severity of the alerts named name.
func severityOf(name string) string {
	for _, s := range events {
		if s.name == name && s.severity != "" {
			return s.severity
		}
	}
	return "warning"
}

// alertMail is the email an alert recipient gets. Every value in it is
// cleaned and bounded: the subject and each line stay far under the 998
// octets a mail line may have.
func alertMail(to string, ev alertEvent) mailMessage {
	ev = ev.clean()
	wd, ok := alertWordings[ev.Event]
	if !ok { // never for an event of the table (a test sees to it)
		wd = alertWordings[eventLogin]
	}
	c := mailContent{Heading: wd.heading, Advice: wd.advice, Info: ev.Severity == "info",
		Subject: fmt.Sprintf(wd.subject, ev.Host, ev.IP)}
	if ev.Email != "" {
		c.row("Account", ev.Email)
	}
	if ev.IP != "" {
		c.row("Client IP", ev.IP)
	}
	c.row("Site", ev.Host)
	when := ev.Timestamp
	if !ev.at.IsZero() {
		when = formatTime(ev.at)
	}
	c.row("Time", when)
	if ev.Reason != "" {
		c.row("Reason", ev.Reason)
	}
	if ap := ev.Approval; ap != nil {
		c.row("Approval", ap.ID)
		c.row("Deadline", ap.Deadline+" (on timeout: "+ap.OnTimeout+")")
		c.row("Approvers", strings.Join(ap.Approvers, ", "))
		if ap.DecidedBy != "" {
			c.row("Decided by", ap.DecidedBy)
		}
	}
	if ev.AuditHead != "" {
		c.row("Audit head", ev.AuditHead)
	}
	return c.message(to)
}

// alerts is where one handler's alerts go, and which events alert.
type alerts struct {
	state    *state
	mailer   *mailer
	emails   []string
	webhooks []*webhook
	on       map[string]bool // by alert_on name
	// window is how long a credential's code_issued alert holds back the
	// next ones (the lockout duration).
	window time.Duration
}

// alertChannel is one place an alert goes: an email recipient or a webhook.
type alertChannel struct {
	kind   string // the metric's channel label: alert_email or webhook
	target string // the recipient, or the webhook's host
	key    string // what makes two channels the same delivery (never shown)
	send   func(ctx context.Context, ev alertEvent) error
}

// channels lists where the alerts go: one email per recipient, each on
// its own so one failure never stops the others, and each webhook.
func (al *alerts) channels() []alertChannel {
	var out []alertChannel
	for _, to := range al.emails {
		out = append(out, alertChannel{kind: "alert_email", target: to, key: fmt.Sprintf("mail %p %s", al.mailer, to),
			send: func(ctx context.Context, ev alertEvent) error { return al.mailer.send(ctx, alertMail(to, ev)) }})
	}
	for _, wh := range al.webhooks {
		out = append(out, alertChannel{kind: "webhook", target: wh.host, key: "webhook " + wh.format + " " + wh.url, send: wh.post})
	}
	return out
}

// logField names a channel's target in a log line.
func (c alertChannel) logField() zap.Field {
	if c.kind == "webhook" {
		return zap.String("webhook_host", c.target)
	}
	return zap.String("recipient", c.target)
}

// logger names the event and its account in the lines of its deliveries.
func (ev alertEvent) logger(log *zap.Logger) *zap.Logger {
	log = log.With(zap.String("event", ev.Event))
	if ev.Account != "" {
		log = log.With(zap.String("email", ev.Account))
	}
	return log
}

// send queues an event's alerts on every channel. Nothing here waits.
// The alerts anyone who is allowed can cause (lockouts, and codes issued,
// which ask only for the password) go on the notices dispatcher, so that a
// burst of them never crowds out a code mail or a login alert.
func (al *alerts) send(ev alertEvent, log *zap.Logger, extra ...alertChannel) {
	d, log := al.state.deliveries, ev.logger(log)
	for _, s := range events {
		if s.name == ev.Event && s.notice {
			d = al.state.notices
		}
	}
	for _, c := range append(al.channels(), extra...) {
		d.deliver(c.kind, log.With(c.logField()), func(ctx context.Context) error { return c.send(ctx, ev) }, nil)
	}
}

// requireAlertWait bounds how long a login with require_alert waits for an
// alert channel to confirm.
var requireAlertWait = 10 * time.Second

// confirm sends ev on every channel and waits, up to
// requireAlertWait, until one confirms delivery. The other deliveries go on
// in the background whatever the answer.
func (al *alerts) confirm(ev alertEvent, log *zap.Logger, extra ...alertChannel) bool {
	chans, log := append(al.channels(), extra...), ev.logger(log)
	results := make(chan error, len(chans))
	for _, c := range chans {
		al.state.deliveries.deliver(c.kind, log.With(c.logField()), func(ctx context.Context) error { return c.send(ctx, ev) },
			func(err error) { results <- err })
	}
	t := time.NewTimer(requireAlertWait)
	defer t.Stop()
	for range chans {
		select {
		case err := <-results:
			if err == nil {
				return true
			}
		case <-t.C:
			return false
		}
	}
	return false
}
