// The webhook verification snippet of the README, compiled and run against
// a real signed POST: the function below must be the README's Go block that
// holds it, byte for byte.

package breakglass

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// verifyBreakGlassSignature checks a break-glass webhook request: its
// signature, and that it was signed within maxAge.
func verifyBreakGlassSignature(secret []byte, header http.Header, body []byte, maxAge time.Duration) bool {
	ts := header.Get("X-Break-Glass-Timestamp")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || time.Since(time.Unix(sec, 0)).Abs() > maxAge {
		return false
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(want), []byte(header.Get("X-Break-Glass-Signature")))
}

func TestREADMEWebhookVerificationSnippet(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	// The README's Go block holding the function, from its first line to
	// the closing fence.
	_, block, _ := strings.Cut(string(readme), "```go\n// verifyBreakGlassSignature ")
	snippet, _, ok := strings.Cut(block, "\n```\n")
	if !ok {
		t.Fatal("README.md does not hold the verification snippet this test runs")
	}
	snippet = "// verifyBreakGlassSignature " + snippet
	src, _ := os.ReadFile("readme_snippet_test.go")
	if !strings.Contains(string(src), "\n"+snippet+"\n\nfunc TestREADMEWebhookVerificationSnippet") {
		t.Fatalf("the compiled function is not the snippet:\n%s", snippet)
	}

	req := posted(t, WebhookConfig{Secret: "s3cret"}, newEvent(eventLogin, "ops@example.com", "192.0.2.1", "h", "", time.Now()))
	if !verifyBreakGlassSignature([]byte("s3cret"), req.Header, req.Body, 5*time.Minute) {
		t.Fatal("the snippet refuses a genuine request")
	}
	for name, c := range map[string]struct {
		secret string
		body   []byte
		header func(http.Header)
	}{
		"wrong secret":  {"other", req.Body, nil},
		"changed body":  {"s3cret", []byte(strings.Replace(string(req.Body), "192.0.2.1", "192.0.2.2", 1)), nil},
		"old timestamp": {"s3cret", req.Body, func(h http.Header) { h.Set("X-Break-Glass-Timestamp", "1700000000") }},
		"no signature":  {"s3cret", req.Body, func(h http.Header) { h.Del("X-Break-Glass-Signature") }},
		"upper-case signature": {"s3cret", req.Body, func(h http.Header) {
			h.Set("X-Break-Glass-Signature", strings.ToUpper(h.Get("X-Break-Glass-Signature")))
		}},
	} {
		h := req.Header.Clone()
		if c.header != nil {
			c.header(h)
		}
		if verifyBreakGlassSignature([]byte(c.secret), h, c.body, 5*time.Minute) {
			t.Errorf("%s: accepted", name)
		}
	}
}
