package breakglass

import (
	"net"
	"net/http"
	"testing"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The tests' one driver is bgtest.Client; these are its two transports to
// this package's handler: in the test's process, and over TCP to a Caddy
// the test started (integration_test.go's world).

// asHTTP serves requests with h in front of the test upstream, as Caddy's
// server would: a replacer in the request's context, the error of the
// handler chain failing the test.
func (h testHandler) asHTTP(t testing.TB) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
		if err := h.ServeHTTP(w, r, upstream); err != nil {
			t.Errorf("%s %s: %v", r.Method, r.URL, err)
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
}

// client is a browser at ip, in the test's process, on http://example.com.
func (h testHandler) client(t testing.TB, ip string) *bgtest.Client {
	c := bgtest.New(t, bgtest.HandlerTransport(h.asHTTP(t), net.JoinHostPort(ip, "40000")), "http://example.com")
	c.Name = ip
	return c
}

// tlsClient is client over TLS (https://example.com).
func (h testHandler) tlsClient(t testing.TB, ip string) *bgtest.Client {
	c := h.client(t, ip)
	c.Base = "https://example.com"
	return c
}

// signInAt runs the whole flow on /admin/ with the configured account and
// the code the handler logged (dev_log_code); it returns the code step's
// answer.
func (h testHandler) signInAt(t testing.TB, c *bgtest.Client) bgtest.Reply {
	t.Helper()
	return c.SignIn("/admin/", "ops@example.com", testPassword, func() string { return devCode(t, h) })
}

// kit is a browser at ip over TCP to the world's Caddy.
func (w *world) kit(ip string) *bgtest.Client {
	c := bgtest.New(w.t, bgtest.OverTCP(ip), w.base)
	c.Name = ip
	return c
}
