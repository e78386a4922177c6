// The README's two recommended configs, loaded as written (hosts, ports and
// upstreams substituted), against paths that slip past a guard written on
// /admin/* alone: nothing reaches the admin upstream unguarded, and the
// public upstream never gets a break-glass cookie.

package breakglass

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// recorder is an upstream that keeps what each request carried, before it
// answers.
type recorder struct {
	*httptest.Server
	seen chan string // "path | X-Break-Glass-User | Cookie"
}

func startRecorder(t *testing.T) *recorder {
	rc := &recorder{seen: make(chan string, 1000)}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc.seen <- r.URL.RawPath + r.URL.Path + " | " + r.Header.Get("X-Break-Glass-User") + " | " + r.Header.Get("Cookie")
	}))
	t.Cleanup(rc.Close)
	return rc
}

// take is what was kept since the last take.
func (rc *recorder) take() (out []string) {
	for {
		select {
		case s := <-rc.seen:
			out = append(out, s)
		default:
			return out
		}
	}
}

var bypassPaths = []string{"/admin", "/admin/", "/admin;x=1/users", "/admin%20/users", "/admin./users", "/ADMIN/users",
	"//admin/users", "/%61dmin/users", "/admin/../admin/users", "/admin%2fusers", "/./admin/users", "/admin/users?break_glass=x"}

// rawGet sends a request line as given, from ip, with cookie.
func rawGet(t *testing.T, ip, addr, path, cookie string) int {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", path, addr)
	if cookie != "" {
		fmt.Fprintf(c, "Cookie: %s\r\n", cookie)
	}
	fmt.Fprint(c, "\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func readmeCaddyfiles(t *testing.T) []string {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range regexp.MustCompile("(?s)```caddyfile\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		if strings.Contains(m[1], "route {") && strings.Contains(m[1], "admin.example.com {") || strings.Contains(m[1], "cookie_path /admin") {
			out = append(out, m[1])
		}
	}
	if len(out) != 2 {
		t.Fatalf("found %d recommended configs in the README, want 2", len(out))
	}
	return out
}

func TestREADMEConfigsLeaveNoPathUnguarded(t *testing.T) {
	for i, cfg := range readmeCaddyfiles(t) {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			w := newWorld(t)
			admin, public := startRecorder(t), startRecorder(t)
			for _, env := range []string{"BREAK_GLASS_HASH", "BG_ALICE_HASH", "BG_BOB_HASH"} {
				t.Setenv(env, w.hash)
			}
			t.Setenv("BG_BOB_TOTP", "JBSWY3DPEHPK3PXP")
			site := cfg[strings.Index(cfg, "\n}\n\n")+4:] // the site block, after the global options
			if !strings.HasPrefix(cfg, "{") {
				site = cfg
			}
			site = strings.NewReplacer("admin.example.com {", fmt.Sprintf("http://127.0.0.1:%d {\n\tbind 127.0.0.1", w.port),
				"www.example.com {", fmt.Sprintf("http://127.0.0.1:%d {\n\tbind 127.0.0.1", w.port),
				"localhost:9000", strings.TrimPrefix(admin.URL, "http://"), "localhost:8000", strings.TrimPrefix(public.URL, "http://"),
				"10.0.0.0/8", "127.0.0.0/8", "account alice@example.com {", "account ops@example.com {", "alert_webhook https://hooks.example.com/break-glass", "alert_webhook "+w.hook.URL+"/hook").Replace(site)
			global := w.caddyfile(100, "")
			global = global[:strings.Index(global, "\nhttp://")]
			w.load(global+"\n"+site, "caddyfile")
			addr := fmt.Sprintf("127.0.0.1:%d", w.port)

			check := func(signedIn bool) {
				got := admin.take()
				if signedIn && len(got) == 0 {
					t.Error("signed in, the admin upstream got nothing")
				}
				for _, rec := range got {
					if !signedIn || !strings.Contains(rec, " | ops@example.com | ") || strings.Contains(rec, "break_glass_") {
						t.Errorf("signed in %v: the admin upstream got %q", signedIn, rec)
					}
				}
				for _, rec := range public.take() {
					if strings.Contains(rec, "break_glass_") || strings.Contains(strings.ToLower(rec), "admin") && !strings.Contains(rec, "%") {
						t.Errorf("signed in %v: the public upstream got %q", signedIn, rec)
					}
				}
			}
			for _, p := range bypassPaths {
				rawGet(t, "127.0.0.2", addr, p, "")
			}
			check(false)
			c := w.kit("127.0.0.2")
			w.signIn(c)
			if r := c.Get("/admin/"); r.Status != http.StatusOK {
				t.Fatalf("signed in: %d", r.Status)
			}
			admin.take()
			var cookies []string
			for _, ck := range c.Jar().Cookies(mustURL(w.base + "/admin/")) {
				cookies = append(cookies, ck.Name+"="+ck.Value)
			}
			for _, p := range append(bypassPaths, "/", "/public", "/adminx") {
				// A browser sends the cookies only where their path matches.
				ck := ""
				if u := mustURL(w.base + p); len(c.Jar().Cookies(u)) > 0 {
					ck = strings.Join(cookies, "; ")
				}
				rawGet(t, "127.0.0.2", addr, p, ck)
			}
			check(true)
		})
	}
}
