// Webhook payload formats, extra headers and signatures, checked by a real
// HTTP server and an HMAC written here from SHA-256 alone (RFC 2104), apart
// from crypto/hmac which the plugin uses.

package breakglass

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

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

type hookRequest struct {
	header http.Header
	body   []byte
}

func recordingServer(t *testing.T) (*httptest.Server, chan hookRequest) {
	got := make(chan hookRequest, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- hookRequest{r.Header.Clone(), b}
	}))
	t.Cleanup(srv.Close)
	return srv, got
}

func TestHMACByHandMatchesRFC4231(t *testing.T) {
	// RFC 4231 test case 2.
	got := hex.EncodeToString(rfc2104HMACSHA256([]byte("Jefe"), []byte("what do ya want for nothing?")))
	if got != "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" {
		t.Fatalf("the hand-made HMAC is wrong: %s", got)
	}
}

func TestWebhookFormatsHeadersAndSignature(t *testing.T) {
	srv, got := recordingServer(t)
	t.Setenv("BG_TEST_HOOK_TOKEN", "tok-123")
	t.Setenv("BG_TEST_HOOK_SECRET", "shh-secret")
	ev := newEvent(eventLogin, "ops@example.com", "192.0.2.10", "admin.example.com", "INC-7 <!channel> @everyone", time.Now())

	for _, format := range []string{"generic", "slack", "discord"} {
		t.Run(format, func(t *testing.T) {
			wh, err := WebhookConfig{URL: srv.URL + "/hook", Format: format, Secret: "{env.BG_TEST_HOOK_SECRET}",
				Headers: map[string]string{"Authorization": "Bearer {env.BG_TEST_HOOK_TOKEN}"}}.provision(caddy.NewReplacer(), "alert_webhook")
			if err != nil {
				t.Fatal(err)
			}
			before := time.Now().Unix()
			if err := wh.post(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
			req := <-got
			if req.header.Get("Authorization") != "Bearer tok-123" || req.header.Get("Content-Type") != "application/json" {
				t.Fatalf("headers: %v", req.header)
			}
			ts := req.header.Get("X-Break-Glass-Timestamp")
			if n, err := strconv.ParseInt(ts, 10, 64); err != nil || n < before || n > time.Now().Unix() {
				t.Fatalf("timestamp %q", ts)
			}
			want := "sha256=" + hex.EncodeToString(rfc2104HMACSHA256([]byte("shh-secret"), append([]byte(ts+"."), req.body...)))
			if sig := req.header.Get("X-Break-Glass-Signature"); sig != want {
				t.Fatalf("signature %q, want %q", sig, want)
			}
			var body map[string]any
			if err := json.Unmarshal(req.body, &body); err != nil {
				t.Fatal(err)
			}
			switch format {
			case "generic":
				if body["event"] != eventLogin || body["reason"] != "INC-7 <!channel> @everyone" || body["severity"] != "critical" {
					t.Fatalf("generic body: %s", req.body)
				}
			case "slack":
				text, _ := body["text"].(string)
				if len(body) != 1 || !strings.Contains(text, "192.0.2.10") || strings.Contains(text, "<!channel>") || !strings.Contains(text, "&lt;!channel&gt;") {
					t.Fatalf("slack body: %s", req.body)
				}
			case "discord":
				content, _ := body["content"].(string)
				am, _ := body["allowed_mentions"].(map[string]any)
				if !strings.Contains(content, "Reason: INC-7") || am == nil || len(am["parse"].([]any)) != 0 {
					t.Fatalf("discord body: %s", req.body)
				}
			}
		})
	}

	// Without a secret: no signature headers.
	wh, _ := WebhookConfig{URL: srv.URL}.provision(caddy.NewReplacer(), "alert_webhook")
	if err := wh.post(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if req := <-got; req.header.Get("X-Break-Glass-Signature") != "" || req.header.Get("X-Break-Glass-Timestamp") != "" {
		t.Fatalf("unsigned webhook carries signature headers: %v", req.header)
	}
}
