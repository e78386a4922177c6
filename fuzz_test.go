// Fuzz targets: the Caddyfile parser, the session cookie decoder, the form
// handler and client-address normalisation. Seeds are in testdata/fuzz.

package breakglass

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func FuzzCaddyfile(f *testing.F) {
	f.Add("break_glass /admin* {\n\temail ops@example.com\n\thash $2a$14$x\n\tallowed_ips 10.0.0.0/8 ::1\n\talert_emails a@b.c\n\tsmtp m:25 {\n\t\ttls none\n\t\tfrom x@y.z\n\t\ttimeout 5s\n\t}\n\tdev_log_code\n}")
	f.Add("break_glass {\n\tmax_attempts 5\n\tlockout 15m\n\tcode_ttl 10m\n\tsession_ttl 1h\n\tsmtp m:587 {\n\t\tusername u\n\t}\n}")
	f.Add("break_glass {\n\tsmtp {\n\t\t}\n}}}")
	f.Fuzz(func(t *testing.T, input string) {
		// Tokenize as the adapter does: caddyfile.NewTestDispenser exits the
		// process on input the lexer refuses (found by this target: seed
		// 421a55a9c49b6677, an unterminated heredoc).
		tokens, err := caddyfile.Tokenize([]byte(input), "Caddyfile")
		if err != nil {
			return
		}
		var h Handler
		_ = h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
		_, _ = parseGlobalOption(caddyfile.NewDispenser(tokens), nil)
	})
}

func FuzzSessionCookie(f *testing.F) {
	st := newSessions([]byte("0123456789abcdef0123456789abcdef"))
	// Fixed times: every fuzzing worker must sign the same cookie.
	exp := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	good := st.encode(session{ID: "00112233445566778899aabbccddeeff", Issued: exp.Add(-time.Hour), Expires: exp,
		Client: netip.MustParseAddr("192.0.2.1"), Scope: "scope"})
	f.Add(good)
	f.Add("")
	f.Add(".")
	f.Add("djF8.AAAA")
	f.Add(good[:len(good)-1] + "B")
	f.Fuzz(func(t *testing.T, value string) {
		s, err := st.verify(value, netip.MustParseAddr("192.0.2.1"), "scope")
		if err != nil {
			return
		}
		// Anything accepted must be exactly what the key signed: the
		// canonical encoding of the session it decodes to.
		if value != good || st.encode(s) != value {
			t.Fatalf("accepted a cookie that was never issued: %q", value)
		}
	})
}

func FuzzLoginForm(f *testing.F) {
	f.Add("POST", "break_glass_step=login&csrf_token=x&email=ops%40example.com&password=pw", "0123456789abcdef0123456789abcdef", "")
	f.Add("POST", "break_glass_step=code&csrf_token=&code=123456", "", "djF8.AAAA")
	f.Add("GET", "", "zz", "")
	f.Add("POST", "break_glass_step=restart", "0123456789abcdef0123456789abcdef", "")
	f.Add("POST", "%%%", "", "")
	f.Add("POST", "break_glass_step=login&csrf_token=x&email=ops%40example.com&password=pw&reason=INC%0D%0A%3Cb%3E", "0123456789abcdef0123456789abcdef", "")
	f.Add("POST", "break_glass_step=code&csrf_token=x&code=287082", "0123456789abcdef0123456789abcdef", "")
	h := newTestHandler(f, &App{MaxAttempts: 1_000_000}, func(h *Handler) {
		h.TOTPSecret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
		h.RequireReason = true
	})
	f.Fuzz(func(t *testing.T, method, body, flow, sess string) {
		if !validMethod(method) {
			return
		}
		r := httptest.NewRequest(method, "/admin/", strings.NewReader(body))
		r.RemoteAddr = "192.0.2.1:1234"
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if validCookieValue(flow) {
			r.AddCookie(&http.Cookie{Name: flowCookie, Value: flow})
		}
		if validCookieValue(sess) {
			r.AddCookie(&http.Cookie{Name: sessionCookie, Value: sess})
		}
		w := httptest.NewRecorder()
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
		if err := h.ServeHTTP(w, r, upstream); err != nil {
			return
		}
		if w.Header().Get("X-Upstream") != "" {
			t.Fatalf("a request without a real session reached the upstream: %s %q", method, body)
		}
		switch w.Code {
		case 200, 303, 400, 401, 403, 413, 429, 503:
		default:
			t.Fatalf("status %d for %s %q", w.Code, method, body)
		}
	})
}

func validCookieValue(v string) bool {
	for _, c := range v {
		if c <= ' ' || c >= 0x7f || c == '"' || c == ';' || c == ',' || c == '\\' {
			return false
		}
	}
	return true
}

func validMethod(m string) bool {
	if m == "" || len(m) > 16 {
		return false
	}
	for _, c := range m {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

func FuzzClientIP(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "::1", "::ffff:10.1.2.3", "fe80::1%eth0", "2001:db8::1", "1.2.3", "", "::ffff:1.2.3.4%x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, ok := parseClientIP(s)
		if !ok {
			return
		}
		if a.Is4In6() || a.Zone() != "" {
			t.Fatalf("%q normalised to %v", s, a)
		}
		if k := limiterKey(a); limiterKey(k) != k {
			t.Fatalf("limiterKey is not stable for %q", s)
		}
		if a.Is4() && limiterKey(a) != a {
			t.Fatalf("an IPv4 client %q is not its own key", s)
		}
		if list, err := parseAllowList([]string{s}); err == nil && !allowed(list, a) {
			t.Fatalf("%q is not allowed by an allow-list of itself", s)
		}
		_, _ = parseAllowList([]string{s + "/64", s + "/8", s})
	})
}

// FuzzVerifyAudit: any file content is checked without a panic, and a file
// that passes is whole lines, each with its hash.
func FuzzVerifyAudit(f *testing.F) {
	a, path := newTestAudit(f)
	for _, ev := range []string{auditCodeIssued, auditLogin, auditRequest} {
		if _, err := a.write(auditRecord{Event: ev, Email: "ops@example.com", Reason: "INC <1>"}); err != nil {
			f.Fatal(err)
		}
	}
	a.Destruct()
	seed, _ := os.ReadFile(path)
	f.Add(seed)
	f.Add([]byte("{}\n"))
	f.Add([]byte(`{"prev":"","hash":"` + strings.Repeat("0", 64) + `"}` + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := verifyAudit(bytes.NewReader(b))
		if err != nil {
			return
		}
		n := rep.Lines
		if n != bytes.Count(b, []byte{'\n'}) || (n > 0 && rep.Head != lineHash(b[bytes.LastIndexByte(b[:len(b)-1], '\n')+1:len(b)-1])) {
			t.Fatalf("accepted %q: %+v", b, rep)
		}
	})
}
