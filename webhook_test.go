// Webhook payload formats, extra headers and signatures, checked by a real
// HTTP server and an HMAC written here from SHA-256 alone (RFC 2104), apart
// from crypto/hmac which the plugin uses.

package breakglass

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/caddyserver/caddy/v2"
)

// rfc2104HMACSHA256 is HMAC-SHA256 built by hand: H((K^opad) || H((K^ipad) || m)).
func rfc2104HMACSHA256(key, msg []byte) []byte {
	if len(key) > 64 {
		k := sha256.Sum256(key)
		key = k[:]
	}
	var ipad, opad [64]byte
	copy(ipad[:], key)
	copy(opad[:], key)
	for i := range ipad {
		ipad[i] ^= 0x36
		opad[i] ^= 0x5c
	}
	inner := sha256.Sum256(append(ipad[:], msg...))
	outer := sha256.Sum256(append(opad[:], inner[:]...))
	return outer[:]
}

// posted is the one request the webhook of cfg makes for ev, to a receiver
// of this test at /hook.
func posted(t *testing.T, cfg WebhookConfig, ev alertEvent) bgtest.HookRequest {
	t.Helper()
	hook := bgtest.StartWebhook(t)
	cfg.URL = hook.URL + "/hook"
	wh, err := cfg.provision(caddy.NewReplacer(), "alert_webhook")
	if err != nil {
		t.Fatal(err)
	}
	if err := wh.post(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	reqs := hook.Requests()
	if len(reqs) != 1 || reqs[0].Method != http.MethodPost || reqs[0].Path != "/hook" {
		t.Fatalf("the webhook got %d requests, want one POST to /hook: %+v", len(reqs), reqs)
	}
	return reqs[0]
}

func TestHMACByHandMatchesRFC4231(t *testing.T) {
	// RFC 4231 test case 2.
	got := hex.EncodeToString(rfc2104HMACSHA256([]byte("Jefe"), []byte("what do ya want for nothing?")))
	if got != "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" {
		t.Fatalf("the hand-made HMAC is wrong: %s", got)
	}
}

func TestWebhookFormatsHeadersAndSignature(t *testing.T) {
	t.Setenv("BG_TEST_HOOK_TOKEN", "tok-123")
	t.Setenv("BG_TEST_HOOK_SECRET", "shh-secret")
	ev := newEvent(eventLogin, "ops@example.com", "192.0.2.10", "admin.example.com", "INC-7 <!channel> @everyone", time.Now())

	for _, format := range []string{"generic", "slack", "discord"} {
		t.Run(format, func(t *testing.T) {
			before := time.Now().Unix()
			req := posted(t, WebhookConfig{Format: format, Secret: "{env.BG_TEST_HOOK_SECRET}",
				Headers: map[string]string{"Authorization": "Bearer {env.BG_TEST_HOOK_TOKEN}"}}, ev)
			if req.Header.Get("Authorization") != "Bearer tok-123" || req.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("headers: %v", req.Header)
			}
			ts := req.Header.Get("X-Break-Glass-Timestamp")
			if n, err := strconv.ParseInt(ts, 10, 64); err != nil || n < before || n > time.Now().Unix() {
				t.Fatalf("timestamp %q", ts)
			}
			want := "sha256=" + hex.EncodeToString(rfc2104HMACSHA256([]byte("shh-secret"), append([]byte(ts+"."), req.Body...)))
			if sig := req.Header.Get("X-Break-Glass-Signature"); sig != want {
				t.Fatalf("signature %q, want %q", sig, want)
			}
			body := req.JSON
			switch format {
			case "generic":
				if body["event"] != eventLogin || body["reason"] != "INC-7 <!channel> @everyone" || body["severity"] != "critical" {
					t.Fatalf("generic body: %s", req.Body)
				}
			case "slack":
				text, _ := body["text"].(string)
				if len(body) != 1 || !strings.Contains(text, "192.0.2.10") || strings.Contains(text, "<!channel>") || !strings.Contains(text, "&lt;!channel&gt;") {
					t.Fatalf("slack body: %s", req.Body)
				}
			case "discord":
				content, _ := body["content"].(string)
				am, _ := body["allowed_mentions"].(map[string]any)
				if !strings.Contains(content, "Reason: INC-7") || am == nil || len(am["parse"].([]any)) != 0 {
					t.Fatalf("discord body: %s", req.Body)
				}
			}
		})
	}

	// Without a secret: no signature headers.
	if req := posted(t, WebhookConfig{}, ev); req.Header.Get("X-Break-Glass-Signature") != "" || req.Header.Get("X-Break-Glass-Timestamp") != "" {
		t.Fatalf("unsigned webhook carries signature headers: %v", req.Header)
	}
}

// hostileInputs are events whose every value is too long, full of what the
// chat formats escape, of multibyte runes and (some) of bidi controls: as
// newEvent makes them from a request, and made directly, past newEvent.
func hostileInputs() map[string]alertEvent {
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	reason := []rune(strings.Repeat("&<>é😀[x](y)*_~`|#\\", 20))[:200]
	return map[string]alertEvent{
		// The finding: a 2,100-character Host.
		"host of 2100": newEvent(eventCodeIssued, "ops@example.com", "192.0.2.10", strings.Repeat("a", 2100), "INC-7", at),
		"escaped host and reason": newEvent(eventLogin, strings.Repeat("o", 300)+"@example.com", "2001:db8::1",
			strings.Repeat("h_(é", 525), string(reason), at),
		"made directly": {
			Event: strings.Repeat("e", 300), IP: strings.Repeat("1", 300), Timestamp: strings.Repeat("t", 300),
			Severity: "critical", Message: strings.Repeat("&<😀_\u202e", 5000), Email: strings.Repeat("é", 900),
			Host: strings.Repeat("&\u2066", 3000), Reason: strings.Repeat("<!channel>é", 500), AuditHead: strings.Repeat("&", 500),
		},
	}
}

// postedBody posts ev in format to a receiver and returns the body, valid
// UTF-8 and a JSON object.
func postedBody(t *testing.T, format string, ev alertEvent) (raw []byte, body map[string]any) {
	t.Helper()
	req := posted(t, WebhookConfig{Format: format}, ev)
	if !utf8.Valid(req.Body) {
		t.Fatalf("%s body is not valid UTF-8", format)
	}
	if req.JSON == nil {
		t.Fatalf("%s body is not a JSON object: %q", format, req.Body)
	}
	return req.Body, req.JSON
}

func utf16Len(s string) int { return len(utf16.Encode([]rune(s))) }

func TestWebhookPayloadsAreBoundedWhateverTheInputs(t *testing.T) {
	for name, ev := range hostileInputs() {
		t.Run(name, func(t *testing.T) {
			_, d := postedBody(t, "discord", ev)
			content, _ := d["content"].(string)
			// Discord: content is at most 2,000 characters.
			if n := utf16Len(content); n > 2000 || n < 100 {
				t.Errorf("discord content is %d UTF-16 units (%d runes), want 100 to 2000", n, utf8.RuneCountInString(content))
			}

			_, s := postedBody(t, "slack", ev)
			text, _ := s["text"].(string)
			if n := utf16Len(text); n > 3000 || n < 100 {
				t.Errorf("slack text is %d UTF-16 units, want 100 to 3000", n)
			}
			// The bound holds after the escaping, and cuts no entity.
			if strings.ContainsAny(text, "<>") {
				t.Errorf("slack text holds an unescaped < or >: %q", text)
			}
			for _, r := range strings.Split(text, "&")[1:] { // each what follows an &
				if !strings.HasPrefix(r, "amp;") && !strings.HasPrefix(r, "lt;") && !strings.HasPrefix(r, "gt;") {
					t.Fatalf("slack text holds a cut or bare entity: %q", "&"+r[:min(len(r), 8)])
				}
			}

			_, g := postedBody(t, "generic", ev)
			for field, bound := range map[string]struct {
				n     int
				runes bool
			}{
				"host": {253, false}, "email": {254, false}, "ip": {64, false}, "audit_head": {64, false},
				"event": {64, false}, "timestamp": {64, false}, "severity": {64, false},
				"reason": {200, true}, "message": {1500, true},
			} {
				v, _ := g[field].(string)
				n := len(v)
				if bound.runes {
					n = utf8.RuneCountInString(v)
				}
				if n > bound.n {
					t.Errorf("generic %s is %d long, want at most %d", field, n, bound.n)
				}
			}
		})
	}
	// Made by newEvent, the message still carries the whole reason: a huge
	// host does not push it out.
	ev := hostileInputs()["escaped host and reason"]
	_, g := postedBody(t, "generic", ev)
	if msg, _ := g["message"].(string); !strings.HasSuffix(msg, "Reason: "+ev.Reason) || utf8.RuneCountInString(ev.Reason) != 200 {
		t.Errorf("the message lost the reason: %q", msg)
	}
}

// bidiControls are the runes that reorder text: embeddings, overrides,
// isolates and marks.
const bidiControls = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"

func TestNoBidiControlReachesAnyAlert(t *testing.T) {
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	b := bidiControls
	events := map[string]alertEvent{
		"newEvent": newEvent(eventLogin, "ops"+b+"@example.com", "192.0.2.10"+b, "admin"+b+".example.com", "INC-7 "+b+"gnp.exe", at),
		"made directly": {Event: eventLockout + b, IP: b + "192.0.2.10", Timestamp: b, Severity: "warning" + b,
			Message: "locked out" + b, Email: b + "ops@example.com", Host: "h" + b, Reason: "r" + b, AuditHead: "ab" + b},
	}
	for name, ev := range events {
		t.Run(name, func(t *testing.T) {
			for _, format := range []string{"generic", "slack", "discord"} {
				raw, _ := postedBody(t, format, ev)
				// json.Marshal writes these runes as they are (not as
				// \u escapes), but check both.
				var decoded any
				_ = json.Unmarshal(raw, &decoded)
				if s := string(raw) + fmt.Sprint(decoded); strings.ContainsAny(s, b) || strings.Contains(strings.ToLower(s), `\u202`) || strings.Contains(strings.ToLower(s), `\u206`) {
					t.Errorf("%s payload holds a bidi control: %q", format, raw)
				}
			}
			m := alertMail("sec@example.com", ev)
			if strings.ContainsAny(m.subject+m.text+m.html, b) {
				t.Errorf("the alert mail holds a bidi control: %+v", m)
			}
		})
	}
}

// unescaped is s without its backslash-escaped characters (Discord's
// markdown escape): what markdown would read as markup.
func unescaped(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			_, n := utf8.DecodeRuneInString(s[i+1:])
			i += n
			b.WriteString("·") // a plain character in its place
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func TestReasonsMakeNoLinkNorMarkupInChats(t *testing.T) {
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for _, reason := range []string{
		"[click](https://evil.example)",
		"<https://evil.example|click>",
		"see https://evil.example/reset now",
		"<!channel> <@U123ABC> <#C123|general>",
		"**bold** __u__ ~~s~~ `code` ||spoiler|| > quote # heading",
	} {
		t.Run(reason, func(t *testing.T) {
			ev := newEvent(eventLogin, "ops@example.com", "192.0.2.10", "admin.example.com", reason, at)

			_, d := postedBody(t, "discord", ev)
			content, _ := d["content"].(string)
			// Past the fixed prefix, no markdown character is left
			// unescaped, and no URL is whole.
			_, msg, ok := strings.Cut(content, "[break-glass] ")
			if !ok {
				t.Fatalf("discord content: %q", content)
			}
			if u := unescaped(msg); strings.ContainsAny(u, "[]()*_~`|<>#\\") {
				t.Errorf("discord content holds markdown: %q (unescaped: %q)", content, u)
			}
			if strings.Contains(content, "://") || strings.Contains(unescaped(msg), "](") {
				t.Errorf("discord content holds a link: %q", content)
			}

			_, s := postedBody(t, "slack", ev)
			text, _ := s["text"].(string)
			if strings.ContainsAny(text, "<>") || strings.Contains(text, "://") {
				t.Errorf("slack text can make a link or a mention: %q", text)
			}
		})
	}
}
