// Out-of-band alerts after a successful login (one email per recipient, a JSON
// webhook), and the bounded background runner every delivery goes through.

package breakglass

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/url"
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
// the app; a delivery beyond it is dropped and logged at ERROR.
const maxInFlightDeliveries = 256

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
	eventLogin = "break_glass_login"
	eventDrill = "break_glass_drill"
)

// alertEvent is the webhook payload, and what the alert email says.
type alertEvent struct {
	Event     string `json:"event"`
	IP        string `json:"ip"`
	Timestamp string `json:"timestamp"`
	Severity  string `json:"severity"`
	Message   string `json:"message"`
	Email     string `json:"email"`
	Host      string `json:"host"`
}

func loginEvent(identity, ip, host string, at time.Time) alertEvent {
	ts := at.UTC().Format(time.RFC3339)
	return alertEvent{
		Event:     eventLogin,
		IP:        ip,
		Timestamp: ts,
		Severity:  "critical",
		Message: fmt.Sprintf("Break-glass login succeeded for %s from %s on %s at %s",
			identity, ip, host, ts),
		Email: identity,
		Host:  host,
	}
}

// drillEvent is the alert of a drill: a test, no one signed in.
func drillEvent(identity, host string, at time.Time) alertEvent {
	ts := at.UTC().Format(time.RFC3339)
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
	eventDrill: {
		subject: "[break-glass DRILL] Test alert from %[1]s: nobody signed in",
		heading: "DRILL: this is a test of the break-glass alerts. Nobody signed in.",
		advice:  "Nothing to do: this mail shows that break-glass alerts reach you.",
	},
}

// alertMail is the email an alert recipient gets.
func alertMail(to string, ev alertEvent) mailMessage {
	wd, ok := mailWordings[ev.Event]
	if !ok {
		wd = mailWordings[eventLogin]
	}
	rows := [][2]string{{"Identity", ev.Email}}
	if ev.IP != "" {
		rows = append(rows, [2]string{"Client IP", ev.IP})
	}
	rows = append(rows, [2]string{"Site", ev.Host}, [2]string{"Time", ev.Timestamp})
	var text, table strings.Builder
	text.WriteString(wd.heading + "\n\n")
	esc := html.EscapeString
	for _, r := range rows {
		fmt.Fprintf(&text, "%-10s %s\n", r[0]+":", r[1])
		fmt.Fprintf(&table, "<tr><th align=\"left\">%s</th><td>%s</td></tr>\n", esc(r[0]), esc(r[1]))
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
		subject: fmt.Sprintf(wd.subject, ev.Host, ev.IP),
		text:    text.String(),
		html:    htmlBody,
	}
}

// webhookClient posts alerts. It follows no redirect: a 3xx is a failed
// delivery, not a reason to send the alert somewhere else.
var webhookClient = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// webhook is one alert webhook, resolved at load.
type webhook struct {
	url  string
	host string // for logs: the URL itself may hold a token
}

// post sends ev as JSON; any answer but 2xx is an error.
func (wh *webhook) post(ctx context.Context, ev alertEvent) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, webhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, wh.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "caddy-break-glass")
	resp, err := webhookClient.Do(req)
	if err != nil {
		// Drop the URL from the error: it may hold a token (Slack, Discord).
		var ue *url.Error
		if errors.As(err, &ue) {
			return fmt.Errorf("%s: %w", ue.Op, ue.Err)
		}
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &webhookStatusError{status: resp.StatusCode}
	}
	return nil
}

type webhookStatusError struct{ status int }

func (e *webhookStatusError) Error() string {
	return fmt.Sprintf("webhook answered %d %s", e.status, http.StatusText(e.status))
}

// alertChannel is one place an alert goes: an email recipient or a webhook.
type alertChannel struct {
	kind   string // the metric's channel label: alert_email or webhook
	target string // the recipient, or the webhook's host
	send   func(ctx context.Context, ev alertEvent) error
}

// alertChannels lists where this handler's alerts go: one email per
// recipient, each on its own so one failure never stops the others, and each
// webhook.
func (h *Handler) alertChannels() []alertChannel {
	var out []alertChannel
	for _, to := range h.alertEmails {
		out = append(out, alertChannel{kind: "alert_email", target: to,
			send: func(ctx context.Context, ev alertEvent) error { return h.mailer.send(ctx, alertMail(to, ev)) }})
	}
	for _, wh := range h.webhooks {
		out = append(out, alertChannel{kind: "webhook", target: wh.host, send: wh.post})
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
func (h *Handler) sendAlerts(ev alertEvent, log *zap.Logger) {
	for _, c := range h.alertChannels() {
		h.deliver(c.kind, log.With(c.logField()), func(ctx context.Context) error { return c.send(ctx, ev) })
	}
}

// deliver runs one delivery in the background and logs its outcome: INFO when
// delivered, ERROR when it failed or could not even start.
func (h *Handler) deliver(channel string, log *zap.Logger, fn func(ctx context.Context) error) {
	log = log.With(zap.String("channel", channel))
	ok := h.state.deliveries.run(func(ctx context.Context) {
		start := now()
		if err := fn(ctx); err != nil {
			var se *webhookStatusError
			fields := []zap.Field{zap.Error(err), zap.Duration("duration", now().Sub(start))}
			if errors.As(err, &se) {
				fields = append(fields, zap.Int("status", se.status))
			}
			metricDeliveries.WithLabelValues(channel, "error").Inc()
			log.Error("break-glass delivery failed", fields...)
			return
		}
		metricDeliveries.WithLabelValues(channel, "ok").Inc()
		log.Info("break-glass delivery succeeded", zap.Duration("duration", now().Sub(start)))
	})
	if !ok {
		metricDeliveries.WithLabelValues(channel, "dropped").Inc()
		log.Error("break-glass delivery dropped: too many deliveries in flight, or the app is stopping")
	}
}
