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
		Event:     "break_glass_login",
		IP:        ip,
		Timestamp: ts,
		Severity:  "critical",
		Message: fmt.Sprintf("Break-glass login succeeded for %s from %s on %s at %s",
			identity, ip, host, ts),
		Email: identity,
		Host:  host,
	}
}

// alertMail is the email an alert recipient gets.
func alertMail(to string, ev alertEvent) mailMessage {
	text := fmt.Sprintf(`Someone used the break-glass emergency login.

Identity:  %s
Client IP: %s
Site:      %s
Time:      %s

If this was not a planned drill or a known incident, treat it as a security
incident: find out who used it, and rotate the break-glass password.
`, ev.Email, ev.IP, ev.Host, ev.Timestamp)
	esc := html.EscapeString
	htmlBody := fmt.Sprintf(`<!doctype html><html><body style="font-family:sans-serif">
<h2 style="color:#b00020">Break-glass emergency login used</h2>
<table cellpadding="4">
<tr><th align="left">Identity</th><td>%s</td></tr>
<tr><th align="left">Client IP</th><td>%s</td></tr>
<tr><th align="left">Site</th><td>%s</td></tr>
<tr><th align="left">Time</th><td>%s</td></tr>
</table>
<p>If this was not a planned drill or a known incident, treat it as a security incident:
find out who used it, and rotate the break-glass password.</p>
</body></html>`, esc(ev.Email), esc(ev.IP), esc(ev.Host), esc(ev.Timestamp))
	return mailMessage{
		to:      to,
		subject: fmt.Sprintf("[break-glass] Emergency login used on %s from %s", ev.Host, ev.IP),
		text:    text,
		html:    htmlBody,
	}
}

// webhookClient posts alerts. It follows no redirect: a 3xx is a failed
// delivery, not a reason to send the alert somewhere else.
var webhookClient = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// postWebhook sends ev as JSON to target; any answer but 2xx is an error.
func postWebhook(ctx context.Context, target string, ev alertEvent) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, webhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
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

// sendAlerts queues the alerts of a successful login: one email per
// recipient, each on its own so one failure never stops the others, and the
// webhook. Nothing here waits.
func (h *Handler) sendAlerts(ev alertEvent, log *zap.Logger) {
	for _, to := range h.alertEmails {
		h.deliver("alert_email", log.With(zap.String("recipient", to)),
			func(ctx context.Context) error { return h.mailer.send(ctx, alertMail(to, ev)) })
	}
	if h.webhookURL != "" {
		h.deliver("webhook", log.With(zap.String("webhook_host", h.webhookHost)),
			func(ctx context.Context) error { return postWebhook(ctx, h.webhookURL, ev) })
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
