// What the handler reads of a request: the URL asked for (forms post back
// to it), its break_glass action, the site's name, the reason given.

package breakglass

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// selfURL is the URL the operator asked for, as a path on this site: forms
// post back to it and a sign-in ends there. Leading slashes and backslashes
// collapse to one slash, so it can never be read as another host
// ("//evil.example", "/\evil.example"). The logout parameter is dropped
// (an enrolment's is kept: a sign-in ends on the enrolment page).
func selfURL(r *http.Request) string {
	u := originalURL(r)
	p := "/" + strings.TrimLeft(u.EscapedPath(), "/\\")
	q := u.RawQuery
	if strings.Contains(q, "break_glass=") {
		v := u.Query()
		if v.Get("break_glass") != actionEnroll {
			v.Del("break_glass")
		}
		q = v.Encode()
	}
	if q != "" {
		p += "?" + q
	}
	return p
}

// originalURL is the URL as the client sent it, before any rewrite.
func originalURL(r *http.Request) *url.URL {
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		return orig.URL
	}
	return r.URL
}

// What the query parameter break_glass asks of the door, on any guarded URL.
const (
	actionLogout   = "logout"   // end the session
	actionEnroll   = "enroll"   // register a security key (signed in)
	actionApproval = "approval" // an approver's link (any client)
	actionHold     = "hold"     // the waiting page, without reloading itself
)

// actionOf is the request's break_glass action, or "".
func actionOf(r *http.Request) string {
	if !strings.Contains(r.URL.RawQuery, "break_glass=") {
		u := originalURL(r) // only if a rewrite could have dropped it
		if u == r.URL || !strings.Contains(u.RawQuery, "break_glass=") {
			return ""
		}
	}
	switch a := originalURL(r).Query().Get("break_glass"); a {
	case actionLogout, actionEnroll, actionApproval, actionHold:
		return a
	}
	return ""
}

// site names the site in mails and alerts: site_name, else the host the
// route matched (the Host header, not the TLS server name, which a client
// may send for another site of the same certificate; on a catch-all site
// the client chooses either), cleaned and cut to the length of a DNS name.
func (h *Handler) site(r *http.Request) string {
	if h.SiteName != "" {
		return h.SiteName
	}
	return safeHost(hostOnly(r.Host))
}

// hostOnly is the request's host without a port, for pages and alerts.
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

// cleanReason trims the reason and makes it one clean line (see cleanText).
func cleanReason(s string) string {
	return strings.TrimSpace(cleanText(s))
}

// reasonProblem says what is wrong with a reason, or "".
func (h *Handler) reasonProblem(reason string) string {
	switch {
	case !utf8.ValidString(reason):
		return "The reason is not valid text."
	case utf8.RuneCountInString(reason) > maxReason:
		return fmt.Sprintf("The reason is too long: at most %d characters.", maxReason)
	case h.RequireReason && reason == "":
		return "Give the reason for this emergency login (the incident, or why normal access is not enough)."
	}
	return ""
}
