// What the handler reads of a request: the URL asked for (forms post back
// to it), a logout, the site's name.

package breakglass

import (
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// selfURL is the URL the operator asked for, as a path on this site: forms
// post back to it and a sign-in ends there. Leading slashes and backslashes
// collapse to one slash, so it can never be read as another host
// ("//evil.example", "/\evil.example"). The logout parameter is dropped.
func selfURL(r *http.Request) string {
	u := originalURL(r)
	p := "/" + strings.TrimLeft(u.EscapedPath(), "/\\")
	q := u.RawQuery
	if strings.Contains(q, "break_glass=") {
		v := u.Query()
		v.Del("break_glass")
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

// isLogout reports whether the request asks to end the session: the query
// parameter break_glass=logout on any guarded URL.
func isLogout(r *http.Request) bool {
	if !strings.Contains(r.URL.RawQuery, "break_glass=") {
		u := originalURL(r) // only if a rewrite could have dropped it
		if u == r.URL || !strings.Contains(u.RawQuery, "break_glass=") {
			return false
		}
	}
	return originalURL(r).Query().Get("break_glass") == "logout"
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
