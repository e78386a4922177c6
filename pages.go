// The pages the handler serves in place of a guarded resource (login, code,
// locked out, forbidden and short messages), and the one time layout of
// pages and mails. Inline HTML from embedded templates, no external asset,
// and no script but one, pinned by its hash, on the security key pages.

package breakglass

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"html/template"
	"net/http"
	"strconv"
	"time"
)

//go:embed templates/page.html templates/factor.html templates/style.css templates/webauthn.js
var templateFS embed.FS

var (
	pageTemplate = template.Must(template.ParseFS(templateFS, "templates/page.html", "templates/factor.html"))
	pageCSS      = template.CSS(mustRead("templates/style.css"))  //nolint:gosec // our own embedded stylesheet
	pageScript   = template.JS(mustRead("templates/webauthn.js")) //nolint:gosec // our own embedded script
	// The only thing a page may load is its own inline style, pinned by
	// hash; a security key page (sign in or enrol with a key, the enrolled
	// key's line with its copy buttons) also its one script.
	pageCSP = "default-src 'none'; style-src 'sha256-" + hashOf(string(pageCSS)) + "'; " +
		"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
	scriptCSP = pageCSP + "; script-src 'sha256-" + hashOf(string(pageScript)) + "'"
)

func mustRead(name string) string {
	b, err := templateFS.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// hashOf is a CSP source hash of an inline style or script.
func hashOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// page is what one page shows.
type page struct {
	Kind   string // login, code, locked, forbidden, message
	Title  string
	Notice string
	Error  string
	Action string // where forms post: the URL that was asked for
	CSRF   string
	Email  string
	Reason string
	// ReasonRequired marks the reason field required (require_reason).
	ReasonRequired bool
	// Mailed says a code was mailed; TOTP that the code page takes an
	// authenticator code.
	Mailed bool
	TOTP   bool
	// WebAuthn shows the security key part (templates/factor.html), which
	// runs Script with KeyOptions; the enrolment pages show KeyName, and
	// the config they give in ConfigLine and ConfigJSON.
	WebAuthn   bool
	KeyOptions json.RawMessage
	Script     template.JS
	KeyName    string
	ConfigLine string
	ConfigJSON string
	Expires    string
	Until      string
	// Approval is the request on the waiting and decision pages.
	Approval *approvalView
	Client   string
	Host     string
	CSS      template.CSS
}

// formatTime is the one layout of times in pages and mails: in UTC, so that
// it reads the same whatever zone the server runs in.
func formatTime(t time.Time) string {
	return t.UTC().Format("15:04:05 MST, 2 Jan 2006")
}

// setPageHeaders sets what every page carries: no caching, no framing, no
// referrer, and a policy that allows nothing but the page's own style.
func setPageHeaders(h http.Header, script bool) {
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	if script {
		h.Set("Content-Security-Policy", scriptCSP)
	} else {
		h.Set("Content-Security-Policy", pageCSP)
	}
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
}

// render writes p with the given status.
func render(w http.ResponseWriter, r *http.Request, status int, p page) error {
	p.CSS = pageCSS
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, p); err != nil {
		return err
	}
	setPageHeaders(w.Header(), p.Script != "")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, err := w.Write(buf.Bytes())
		return err
	}
	return nil
}
