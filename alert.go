// Out-of-band alerts after a successful login (one email per recipient, a JSON
// webhook), and the bounded background runner every delivery goes through.

package breakglass

import (
	"context"
	"errors"
	"fmt"
	"html"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// webhookTimeout bounds one webhook POST, connection to answer.
var webhookTimeout = 10 * time.Second

// deliveryGrace is how long stopping waits for deliveries in flight (an
// alert for a login made just before a shutdown) before cancelling them.
var deliveryGrace = 5 * time.Second

// maxInFlightDeliveries bounds the mails and webhooks running at once across
// the app; a delivery beyond it is dropped and logged at ERROR. Lockout
// alerts have their own, smaller bound.
const (
	maxInFlightDeliveries = 256
	maxInFlightNotices    = 32
)

// Lockout alerts are limited across the app: at most lockoutAlertsPerWindow
// per lockoutAlertWindow; the next one sent says how many were held back.
const (
	lockoutAlertsPerWindow = 5
	lockoutAlertWindow     = time.Minute
)

// lockoutAlerts counts the lockout alerts of the current window.
type lockoutAlerts struct {
	mu        sync.Mutex
	window    time.Time
	sent      int
	held      int
	heldSince time.Time
}

// allow says whether a lockout alert may go now and, if so, how many were
// held back before it (and since when).
func (l *lockoutAlerts) allow(t time.Time) (ok bool, held int, since time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t.Sub(l.window) >= lockoutAlertWindow {
		l.window, l.sent = t, 0
	}
	if l.sent >= lockoutAlertsPerWindow {
		if l.held == 0 {
			l.heldSince = t
		}
		l.held++
		return false, 0, time.Time{}
	}
	l.sent++
	held, since = l.held, l.heldSince
	l.held = 0
	return true, held, since
}

// dispatcher runs deliveries in the background so that no response waits on
// SMTP or a webhook. It bounds how many run at once and, on close, cancels
// them and waits until every one has returned.
type dispatcher struct {
	ctx    context.Context
	cancel context.CancelFunc
	slots  chan struct{}

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

func newDispatcher(limit int) *dispatcher {
	ctx, cancel := context.WithCancel(context.Background())
	return &dispatcher{ctx: ctx, cancel: cancel, slots: make(chan struct{}, limit)}
}

// run starts fn in the background. It returns false, without running fn, when
// the dispatcher is closed or full.
func (d *dispatcher) run(fn func(ctx context.Context)) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	select {
	case d.slots <- struct{}{}:
	default:
		return false
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer func() { <-d.slots }()
		fn(d.ctx)
	}()
	return true
}

// close refuses new deliveries, gives those in flight up to grace to finish,
// then cancels the rest and waits for them to return.
func (d *dispatcher) close(grace time.Duration) {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	d.cancel()
	<-done
}

// Alert events: the `event` of the webhook payload.
const (
	eventLogin      = "break_glass_login"
	eventCodeIssued = "break_glass_code_issued"
	eventLockout    = "break_glass_lockout"
	eventSpent      = "break_glass_credential_spent"
	eventDrill      = "break_glass_drill"
)

// alertOnEvents maps the alert_on names to their events; defaultAlertOn is
// what alerts when alert_on is not set.
var (
	alertOnEvents  = map[string]string{"login": eventLogin, "code_issued": eventCodeIssued, "lockout": eventLockout}
	defaultAlertOn = []string{"login", "lockout"}
)

// eventSeverity is the severity of each event.
var eventSeverity = map[string]string{
	eventLogin:      "critical",
	eventCodeIssued: "warning",
	eventLockout:    "warning",
	eventSpent:      "critical",
	eventDrill:      "info",
}

// alertEvent is the webhook payload, and what the alert email says.
type alertEvent struct {
	Event     string `json:"event"`
	IP        string `json:"ip"`
	Timestamp string `json:"timestamp"`
	Severity  string `json:"severity"`
	Message   string `json:"message"`
	Email     string `json:"email"`
	Host      string `json:"host"`
	// Reason is what the operator typed in the login form's reason field.
	Reason string `json:"reason,omitempty"`
	// AuditHead is the SHA-256 of the audit log's last line once this
	// event was written to it (with audit_log).
	AuditHead string `json:"audit_head,omitempty"`
}

// newEvent makes the alert of one event of a sign-in. Each value is cleaned
// and bounded (see alertbounds.go) before the message is made of it, so
// that a huge Host header cannot push the reason out of the message.
func newEvent(event, identity, ip, host, reason string, at time.Time) alertEvent {
	ts := at.UTC().Format(time.RFC3339)
	identity, ip, host, reason = safeEmail(identity), safeIP(ip), safeHost(host), safeReason(reason)
	var msg string
	switch event {
	case eventLogin:
		msg = fmt.Sprintf("Break-glass login succeeded for %s from %s on %s at %s", identity, ip, host, ts)
	case eventCodeIssued:
		msg = fmt.Sprintf("Break-glass password accepted for %s from %s on %s at %s: a one-time code is pending", identity, ip, host, ts)
	case eventLockout:
		msg = fmt.Sprintf("Break-glass client %s locked out after too many failed attempts on %s at %s", ip, host, ts)
	case eventSpent:
		msg = fmt.Sprintf("The break-glass credential of %s is spent (max_uses reached) after a login from %s on %s at %s: set a new hash", identity, ip, host, ts)
	}
	if reason != "" {
		msg += ". Reason: " + reason
	}
	return alertEvent{Event: event, IP: ip, Timestamp: ts, Severity: eventSeverity[event], Message: msg,
		Email: identity, Host: host, Reason: reason}
}

// drillEvent is the alert of a drill: a test, no one signed in.
func drillEvent(identity, host string, at time.Time) alertEvent {
	ts := at.UTC().Format(time.RFC3339)
	identity, host = safeEmail(identity), safeHost(host)
	return alertEvent{
		Event:     eventDrill,
		Timestamp: ts,
		Severity:  "info",
		Message: fmt.Sprintf("DRILL: this is a test of the break-glass alerts for %s, run from %s at %s. Nobody signed in; no action is needed.",
			identity, host, ts),
		Email: identity,
		Host:  host,
	}
}

// mailWording is what an alert email of one event says besides its fields.
type mailWording struct {
	subject string // with %[1]s the host and %[2]s the client IP
	heading string
	advice  string
}

var mailWordings = map[string]mailWording{
	eventLogin: {
		subject: "[break-glass] Emergency login used on %[1]s from %[2]s",
		heading: "Someone used the break-glass emergency login.",
		advice: "If this was not a planned drill or a known incident, treat it as a security\n" +
			"incident: find out who used it, and rotate the break-glass password.",
	},
	eventCodeIssued: {
		subject: "[break-glass] Password accepted on %[1]s from %[2]s: a code is pending",
		heading: "Someone gave the right break-glass password: a one-time code is pending.",
		advice: "If this is not a known incident, someone knows the break-glass password: rotate it\n" +
			"now (the pending code stops working with the old hash).",
	},
	eventLockout: {
		subject: "[break-glass] Client %[2]s locked out on %[1]s",
		heading: "A client was locked out of the break-glass login after too many failed attempts.",
		advice:  "If nobody on the team was trying to sign in, someone is guessing: find out who.",
	},
	eventSpent: {
		subject: "[break-glass] Credential spent on %[1]s after a login from %[2]s",
		heading: "The break-glass credential reached its max_uses and no longer works.",
		advice:  "Set a new break-glass password (a new hash) so that the door can be used again.",
	},
	eventDrill: {
		subject: "[break-glass DRILL] Test alert from %[1]s: nobody signed in",
		heading: "DRILL: this is a test of the break-glass alerts. Nobody signed in.",
		advice:  "Nothing to do: this mail shows that break-glass alerts reach you.",
	},
}

// alertMail is the email an alert recipient gets. Every value in it is
// cleaned and bounded: the subject and each line stay far under the 998
// octets a mail line may have.
func alertMail(to string, ev alertEvent) mailMessage {
	ev = ev.clean()
	wd, ok := mailWordings[ev.Event]
	if !ok {
		wd = mailWordings[eventLogin]
	}
	rows := [][2]string{{"Identity", ev.Email}}
	if ev.IP != "" {
		rows = append(rows, [2]string{"Client IP", ev.IP})
	}
	rows = append(rows, [2]string{"Site", ev.Host}, [2]string{"Time", ev.Timestamp})
	if ev.Reason != "" {
		rows = append(rows, [2]string{"Reason", ev.Reason})
	}
	if ev.AuditHead != "" {
		rows = append(rows, [2]string{"Audit head", ev.AuditHead})
	}
	var text, table strings.Builder
	text.WriteString(wd.heading + "\n\n")
	esc := html.EscapeString
	for _, r := range rows {
		text.WriteString(mailTextRow(r[0], r[1]))
		table.WriteString(mailHTMLRow(r[0], r[1]))
	}
	text.WriteString("\n" + wd.advice + "\n")
	color := "#b00020"
	if ev.Severity == "info" {
		color = "#1a5fb4"
	}
	htmlBody := fmt.Sprintf(`<!doctype html><html><body style="font-family:sans-serif">
<h2 style="color:%s">%s</h2>
<table cellpadding="4">
%s</table>
<p>%s</p>
</body></html>`, color, esc(wd.heading), table.String(), esc(strings.ReplaceAll(wd.advice, "\n", " ")))
	return mailMessage{
		to:      to,
		subject: clip(fmt.Sprintf(wd.subject, ev.Host, ev.IP), maxMailSubjectBytes, byteUnit),
		text:    text.String(),
		html:    htmlBody,
	}
}

// webhookClient posts alerts. It follows no redirect: a 3xx is a failed
// delivery, not a reason to send the alert somewhere else.
var webhookClient = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

type webhookStatusError struct{ status int }

func (e *webhookStatusError) Error() string {
	return fmt.Sprintf("webhook answered %d %s", e.status, http.StatusText(e.status))
}

// alertChannel is one place an alert goes: an email recipient or a webhook.
type alertChannel struct {
	kind   string // the metric's channel label: alert_email or webhook
	target string // the recipient, or the webhook's host
	key    string // what makes two channels the same delivery (never shown)
	send   func(ctx context.Context, ev alertEvent) error
}

// alertChannels lists where this handler's alerts go: one email per
// recipient, each on its own so one failure never stops the others, and each
// webhook.
func (h *Handler) alertChannels() []alertChannel {
	var out []alertChannel
	for _, to := range h.alertEmails {
		out = append(out, alertChannel{kind: "alert_email", target: to, key: fmt.Sprintf("mail %p %s", h.mailer, to),
			send: func(ctx context.Context, ev alertEvent) error { return h.mailer.send(ctx, alertMail(to, ev)) }})
	}
	for _, wh := range h.webhooks {
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

// sendAlerts queues an event's alerts on every channel. Nothing here waits.
// The alerts anyone who is allowed can cause (lockouts, and codes issued,
// which ask only for the password) go on the notices dispatcher, so that a
// burst of them never crowds out a code mail or a login alert.
func (h *Handler) sendAlerts(ev alertEvent, log *zap.Logger) {
	d := h.state.deliveries
	if ev.Event == eventLockout || ev.Event == eventCodeIssued {
		d = h.state.notices
	}
	for _, c := range h.alertChannels() {
		h.deliverOn(d, c.kind, log.With(c.logField()), func(ctx context.Context) error { return c.send(ctx, ev) }, nil)
	}
}

// alertLockout sends the alert of a lockout, unless too many went out in
// this window; the next one sent counts those held back.
func (h *Handler) alertLockout(ev alertEvent, log *zap.Logger) {
	ok, held, since := h.state.lockouts.allow(now())
	if !ok {
		log.Warn("break-glass lockout alert held back: too many lockouts at once; the next lockout alert will count it",
			zap.Int("per_minute", lockoutAlertsPerWindow))
		return
	}
	if held > 0 {
		ev.Message += fmt.Sprintf(". %s were not alerted one by one since %s", plural(held, "other lockout"), since.UTC().Format(time.RFC3339))
	}
	h.sendAlerts(ev, log)
}

// alertCodeIssued sends the alert of a code issued, unless one already went
// for this credential (h.scope) within the lockout duration; the next one
// sent after that counts those held back.
func (h *Handler) alertCodeIssued(ev alertEvent, log *zap.Logger) {
	window := defaultLockout
	if h.app != nil && h.app.Lockout > 0 {
		window = time.Duration(h.app.Lockout)
	}
	ok, held, since := h.state.codeAlerts.allow(h.scope, now(), window)
	if !ok {
		log.Warn("break-glass code_issued alert held back: one already went for this credential in this window; the next one will count it",
			zap.Duration("window", window))
		return
	}
	if held > 0 {
		verb := "were"
		if held == 1 {
			verb = "was"
		}
		ev.Message += fmt.Sprintf(". %s for this credential %s not alerted one by one since %s",
			plural(held, "other code request"), verb, since.UTC().Format(time.RFC3339))
	}
	h.sendAlerts(ev, log)
}

// deliver runs one delivery in the background and logs its outcome: INFO when
// delivered, ERROR when it failed or could not even start.
func (h *Handler) deliver(channel string, log *zap.Logger, fn func(ctx context.Context) error) {
	h.deliverOn(h.state.deliveries, channel, log, fn, nil)
}

// errDropped is the outcome of a delivery that could not start.
var errDropped = errors.New("dropped: too many deliveries in flight, or the app is stopping")

// deliverOn is deliver on the dispatcher d, calling done (if not nil) with
// the outcome.
func (h *Handler) deliverOn(d *dispatcher, channel string, log *zap.Logger, fn func(ctx context.Context) error, done func(error)) {
	log = log.With(zap.String("channel", channel))
	ok := d.run(func(ctx context.Context) {
		start := now()
		err := fn(ctx)
		if err != nil {
			var se *webhookStatusError
			fields := []zap.Field{zap.Error(err), zap.Duration("duration", now().Sub(start))}
			if errors.As(err, &se) {
				fields = append(fields, zap.Int("status", se.status))
			}
			metricDeliveries.WithLabelValues(channel, "error").Inc()
			log.Error("break-glass delivery failed", fields...)
		} else {
			metricDeliveries.WithLabelValues(channel, "ok").Inc()
			log.Info("break-glass delivery succeeded", zap.Duration("duration", now().Sub(start)))
		}
		if done != nil {
			done(err)
		}
	})
	if !ok {
		metricDeliveries.WithLabelValues(channel, "dropped").Inc()
		log.Error("break-glass delivery dropped: too many deliveries in flight, or the app is stopping")
		if done != nil {
			done(errDropped)
		}
	}
}

// confirmAlerts sends ev on every channel and waits, up to
// requireAlertWait, until one confirms delivery. The other deliveries go on
// in the background whatever the answer.
func (h *Handler) confirmAlerts(ev alertEvent, log *zap.Logger) bool {
	chans := h.alertChannels()
	results := make(chan error, len(chans))
	for _, c := range chans {
		h.deliverOn(h.state.deliveries, c.kind, log.With(c.logField()), func(ctx context.Context) error { return c.send(ctx, ev) },
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
