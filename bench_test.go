// Micro-benchmarks: what the guard costs a request with a session, and what a
// tracked client costs in memory. `go test -run '^$' -bench . -benchmem`.

package breakglass

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func BenchmarkSessionVerify(b *testing.B) {
	st := newSessions([]byte("0123456789abcdef0123456789abcdef"))
	s := session{ID: "00112233445566778899aabbccddeeff", Issued: time.Now(), Expires: time.Now().Add(time.Hour), Client: clientA, Scope: "0123456789abcdef0123456789abcdef"}
	v := st.encode(s)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := st.verify(v, clientA, s.Scope); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLimiterCheck(b *testing.B) {
	l := newLimiter()
	for i := range 10000 {
		l.fail(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 5, time.Hour)
	}
	k := netip.AddrFrom4([4]byte{10, 0, 1, 1})
	b.ReportAllocs()
	for b.Loop() {
		_, _, _ = l.lockedUntil(k)
	}
}

func BenchmarkClientIPNormalisation(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		a, _ := parseClientIP("::ffff:192.0.2.1")
		_ = limiterKey(a)
		a6, _ := parseClientIP("2001:db8:1:2:3:4:5:6")
		_ = limiterKey(a6)
	}
}

// BenchmarkServeHTTPWithSession is the whole pass-through of a request with
// a valid session, the next handler doing nothing. One prepared request is
// reused; only its Cookie header is put back each time (the guard strips its
// own cookie before passing a request on).
func BenchmarkServeHTTPWithSession(b *testing.B) {
	h := newTestHandler(b, nil, nil)
	cookie := setCookie(h.signInAt(b, h.client(b, "192.0.2.1")), sessionCookie)
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	r := httptest.NewRequest("GET", "/admin/", nil)
	r.RemoteAddr = "192.0.2.1:4000"
	w := httptest.NewRecorder()
	req := caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
	full := cookie.Name + "=" + cookie.Value + "; app=1"
	line := []string{full}
	b.ReportAllocs()
	for b.Loop() {
		line[0] = full
		req.Header["Cookie"] = line[:1]
		if err := h.ServeHTTP(w, req, next); err != nil {
			b.Fatal(err)
		}
	}
	if got := req.Header.Get("Cookie"); got != "app=1" {
		b.Fatalf("the upstream would get Cookie %q", got)
	}
}

// BenchmarkLimiterMemory reports the heap a tracked client costs
// (B/client) at 10k, 100k and 1M clients, and checks that the bound holds.
func BenchmarkLimiterMemory(b *testing.B) {
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				l := newLimiter()
				l.setMaxClients(n)
				for i := range n + 1000 { // 1000 beyond the bound
					a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)})
					l.fail(a, 5, time.Hour)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				if got := len(l.clients); got != n {
					b.Fatalf("the limiter tracks %d clients with a bound of %d", got, n)
				}
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "B/client")
				runtime.KeepAlive(l)
			}
		})
	}
}
