// Alert webhooks: their configuration (URL, payload format, extra headers,
// a signing secret) and the POST itself.

package breakglass

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// webhookTimeout bounds one webhook POST, connection to answer.
var webhookTimeout = 10 * time.Second

// webhookClient posts alerts. It follows no redirect: a 3xx is a failed
// delivery, not a reason to send the alert somewhere else.
var webhookClient = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

type webhookStatusError struct{ status int }

func (e *webhookStatusError) Error() string {
	return fmt.Sprintf("webhook answered %d %s", e.status, http.StatusText(e.status))
}

// WebhookConfig is one alert webhook.
type WebhookConfig struct {
	// The URL (http or https) that gets a POST for each alert. Placeholders
	// ({env.*}) are resolved at load; the URL never appears in logs, only
	// its host.
	URL string `json:"url"`

	// The payload: "generic" (default: the JSON event: event, ip,
	// timestamp, severity, message, email, host, reason…), "slack"
	// ({"text": …}) or "discord" ({"content": …}).
	Format string `json:"format,omitempty"`

	// Extra request headers, e.g. Authorization. Placeholders are resolved
	// at load; values are never logged.
	Headers map[string]string `json:"headers,omitempty"`

	// With a secret (placeholders resolved at load), every POST carries
	// X-Break-Glass-Timestamp (Unix seconds) and X-Break-Glass-Signature:
	// "sha256=" and the hex HMAC-SHA256, under the secret, of the timestamp,
	// ".", and the body.
	Secret string `json:"secret,omitempty"`
}

// webhookFormats are the payload formats a webhook may have.
var webhookFormats = map[string]bool{"generic": true, "slack": true, "discord": true}

// Headers of a signed webhook POST.
const (
	webhookTimestampHeader = "X-Break-Glass-Timestamp"
	webhookSignatureHeader = "X-Break-Glass-Signature"
)

// webhook is one alert webhook, resolved at load.
type webhook struct {
	url     string
	host    string // for logs: the URL itself may hold a token
	format  string
	headers http.Header
	secret  []byte
}

// provision resolves and checks the config; errors never show the URL's
// path, a header value or the secret.
func (c WebhookConfig) provision(repl *caddy.Replacer, name string) (*webhook, error) {
	u, err := resolve(repl, c.URL)
	if err != nil {
		return nil, fmt.Errorf("%s: url: %v", name, err)
	}
	pu, err := url.Parse(u)
	if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
		return nil, fmt.Errorf("%s: must be an absolute http or https URL", name)
	}
	wh := &webhook{url: u, host: pu.Host, format: cmp.Or(c.Format, "generic"), headers: http.Header{}}
	if !webhookFormats[wh.format] {
		return nil, fmt.Errorf("%s: format %q: must be generic, slack or discord", name, c.Format)
	}
	for k, v := range c.Headers {
		if !validHeaderName(k) {
			return nil, fmt.Errorf("%s: header %q: not a valid header name", name, k)
		}
		switch textproto.CanonicalMIMEHeaderKey(k) {
		case "Host", "Content-Length", "Content-Type", webhookTimestampHeader, webhookSignatureHeader:
			return nil, fmt.Errorf("%s: header %q: set by break_glass itself", name, k)
		}
		val, err := resolveSecret(repl, v)
		if err != nil {
			return nil, fmt.Errorf("%s: header %s: %v", name, k, err)
		}
		if strings.IndexFunc(val, func(r rune) bool { return (r < 0x20 && r != '\t') || r == 0x7f }) >= 0 {
			return nil, fmt.Errorf("%s: header %s: the value holds a line break or another control character", name, k)
		}
		wh.headers.Set(k, val)
	}
	if c.Secret != "" {
		sec, err := resolveSecret(repl, c.Secret)
		if err != nil {
			return nil, fmt.Errorf("%s: secret: %v", name, err)
		}
		if sec == "" {
			return nil, fmt.Errorf("%s: secret: empty once resolved", name)
		}
		wh.secret = []byte(sec)
	}
	return wh, nil
}

// resolveSecret resolves the placeholders of a secret value. When that
// fails, the error shows the value only if it is one whole placeholder (a
// name such as {env.HOOK_SECRET}): a literal secret that merely holds braces
// is not shown.
func resolveSecret(repl *caddy.Replacer, v string) (string, error) {
	out, err := resolve(repl, v)
	if err == nil {
		return out, nil
	}
	t := strings.TrimSpace(v)
	if strings.HasPrefix(t, "{") && strings.HasSuffix(t, "}") && strings.Count(t, "{") == 1 {
		return "", err
	}
	return "", errors.New("holds a { } that is not a placeholder that resolves (the value is not shown; write a literal brace as \\{ or \\})")
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) {
			return false
		}
	}
	return true
}

// body is the payload of ev in the webhook's format. Every field is
// cleaned (no bidi control, no line break) and bounded first, and each
// chat text is bounded again after its escaping: see alertbounds.go.
func (wh *webhook) body(ev alertEvent) ([]byte, error) {
	ev = ev.clean()
	switch wh.format {
	case "slack":
		// Slack reads <…> as links and mentions: the text is escaped as
		// its API asks, and a URL typed in a reason is defanged.
		return json.Marshal(map[string]string{"text": ev.chatText(maxSlackText, utf16Unit, slackEscape)})
	case "discord":
		// A reason typed as "@everyone" must not ping a whole server, nor
		// "[click](https://…)" make a link: mentions are off, markdown is
		// escaped and a URL typed in a reason is defanged.
		return json.Marshal(map[string]any{"content": ev.chatText(maxDiscordContent, utf16Unit, discordEscape),
			"allowed_mentions": map[string][]string{"parse": {}}})
	default:
		// The event as it is (cleaned and bounded): a JSON consumer
		// escapes for its own display.
		return json.Marshal(ev)
	}
}

// signWebhook is the signature of a POST: "sha256=" and the hex HMAC-SHA256
// of timestamp + "." + body.
func signWebhook(secret []byte, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// post sends ev; any answer but 2xx is an error.
func (wh *webhook) post(ctx context.Context, ev alertEvent) error {
	body, err := wh.body(ev)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, webhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, wh.url, bytes.NewReader(body))
	if err != nil {
		return errors.New("making the request failed") // the error would show the URL
	}
	for k, v := range wh.headers {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "caddy-break-glass")
	}
	if wh.secret != nil {
		ts := strconv.FormatInt(now().Unix(), 10)
		req.Header.Set(webhookTimestampHeader, ts)
		req.Header.Set(webhookSignatureHeader, signWebhook(wh.secret, ts, body))
	}
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

// unmarshalCaddyfile reads `alert_webhook <url> [{ format …; header <name>
// <value>; secret <value> }]`.
func (c *WebhookConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.Errf("alert_webhook: needs a value")
	}
	c.URL = d.Val()
	if d.NextArg() {
		return d.Errf("alert_webhook: takes one value, got more")
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "format":
			if err := oneArg(d, &c.Format); err != nil {
				return err
			}
			if !webhookFormats[c.Format] {
				return d.Errf("alert_webhook: format %q: must be generic, slack or discord", c.Format)
			}
		case "header":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("alert_webhook: header: needs a name and a value")
			}
			if c.Headers == nil {
				c.Headers = map[string]string{}
			}
			c.Headers[args[0]] = args[1]
		case "secret":
			if err := oneArg(d, &c.Secret); err != nil {
				return err
			}
		default:
			return d.Errf("alert_webhook: unknown subdirective %q", d.Val())
		}
	}
	return nil
}
