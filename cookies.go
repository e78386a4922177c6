// The handler's cookies (the session and the sign-in flow), made by one
// constructor, the CSRF token bound to the flow, and the reading and
// stripping of cookies on the pass-through path.

package breakglass

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
)

// flowCookie names the cookie of one browser's sign-in.
const flowCookie = "break_glass_flow"

// The flow cookie identifies one browser's sign-in: the CSRF token is its
// MAC, and a code is bound to the flow that asked for it. A new flow is made
// at each right password, so a code never outlives the login it belongs to;
// that flow names the account's scope after a dot ("<id>.<scope>"), so the
// code step knows which account's code to check. A client that changes the
// scope only points at another account's codes, none of which is bound to
// its flow.

func newFlowID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// flowFrom returns the request's flow ID, or "" if it has none or a
// malformed one.
func (h *Handler) flowFrom(r *http.Request) string {
	c, err := r.Cookie(h.names(r).flow)
	if err != nil {
		return ""
	}
	id, scope, scoped := strings.Cut(c.Value, ".")
	if !isHex(id, 32) || (scoped && !isHex(scope, 32)) {
		return ""
	}
	return c.Value
}

// flowCookieFor is the flow cookie of flow ("" deletes it).
func (h *Handler) flowCookieFor(r *http.Request, flow string) *http.Cookie {
	if flow == "" {
		return h.cookie(r, h.names(r).flow, "", -1)
	}
	return h.cookie(r, h.names(r).flow, flow, 0)
}

// cookieNames are the names of the handler's two cookies.
type cookieNames struct{ session, flow string }

// hostPrefix is the cookie prefix a browser accepts only from the host that
// set it, over TLS, with Path=/ and no Domain: a sibling subdomain cannot
// plant or overwrite such a cookie.
const hostPrefix = "__Host-"

// names are the cookie names of this request.
func (h *Handler) names(r *http.Request) *cookieNames {
	if r.TLS != nil {
		return &h.tlsNames
	}
	return &h.plainNames
}

// cookie makes every cookie the handler sets, so that their attributes
// cannot drift apart. maxAge 0 is a browser-session cookie, -1 deletes it.
func (h *Handler) cookie(r *http.Request, name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: h.cookiePath, MaxAge: maxAge,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode}
}

func (h *Handler) csrfToken(flow string) string {
	m := hmac.New(sha256.New, h.state.csrfKey)
	m.Write([]byte(flow))
	return b64.EncodeToString(m.Sum(nil))
}

func (h *Handler) validCSRF(flow, token string) bool {
	return hmac.Equal([]byte(token), []byte(h.csrfToken(flow)))
}

// cookieValue finds a cookie in the request headers without parsing (and
// allocating) the others.
func cookieValue(h http.Header, name string) (string, bool) {
	for _, line := range h["Cookie"] {
		for len(line) > 0 {
			var part string
			if i := strings.IndexByte(line, ';'); i >= 0 {
				part, line = line[:i], line[i+1:]
			} else {
				part, line = line, ""
			}
			part = strings.TrimSpace(part)
			if len(part) > len(name) && part[len(name)] == '=' && part[:len(name)] == name {
				v := part[len(name)+1:]
				if len(v) > 1 && v[0] == '"' && v[len(v)-1] == '"' {
					v = v[1 : len(v)-1]
				}
				return v, true
			}
		}
	}
	return "", false
}

// stripOwnCookies removes this handler's cookies from a request before it
// goes on, so that no upstream (or its logs) ever sees a session cookie.
func stripOwnCookies(h http.Header) {
	lines := h["Cookie"]
	kept := lines[:0]
	for _, line := range lines {
		if !strings.Contains(line, "break_glass_") {
			kept = append(kept, line)
			continue
		}
		var b strings.Builder
		for part := range strings.SplitSeq(line, ";") {
			part = strings.TrimSpace(part)
			if part == "" || strings.HasPrefix(part, "break_glass_") || strings.HasPrefix(part, hostPrefix+"break_glass_") {
				continue
			}
			if b.Len() == 0 {
				b.Grow(len(line))
			} else {
				b.WriteString("; ")
			}
			b.WriteString(part)
		}
		if b.Len() > 0 {
			kept = append(kept, b.String())
		}
	}
	if len(kept) == 0 {
		h.Del("Cookie")
		return
	}
	h["Cookie"] = kept
}

// isHex reports whether s is n lowercase hex digits.
func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
