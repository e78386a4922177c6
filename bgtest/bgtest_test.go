package bgtest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"
)

// site sets a cookie and redirects on /set, deletes it on /del, and echoes
// what it was sent on /echo; it counts the requests to /next.
func site(next *int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/set":
			http.SetCookie(w, &http.Cookie{Name: "s", Value: "1", Path: "/"})
			http.Redirect(w, r, "/next", http.StatusSeeOther)
		case "/del":
			http.SetCookie(w, &http.Cookie{Name: "s", Path: "/", MaxAge: -1})
		case "/next":
			*next++
		case "/echo":
			host, _, _ := strings.Cut(r.RemoteAddr, ":")
			fmt.Fprintf(w, "cookie=%q from=%s tls=%v xff=%s host=%s", r.Header.Get("Cookie"), host, r.TLS != nil, r.Header.Get("X-Forwarded-For"), r.Host)
		}
	})
}

func TestClientKeepsAndDeletesCookiesAndFollowsNoRedirect(t *testing.T) {
	var next int
	srv := httptest.NewServer(site(&next))
	t.Cleanup(srv.Close)
	for name, c := range map[string]*Client{
		"in-process": New(t, HandlerTransport(site(&next), "192.0.2.7:40000"), "https://example.com"),
		"over TCP":   New(t, OverTCP("127.0.0.1"), srv.URL),
	} {
		t.Run(name, func(t *testing.T) {
			next = 0
			c.Header.Set("X-Forwarded-For", "203.0.113.9")
			if r := c.Get("/set"); r.Status != http.StatusSeeOther || r.Header.Get("Location") != "/next" || next != 0 {
				t.Fatalf("/set: %d %q, /next reached %d times", r.Status, r.Header.Get("Location"), next)
			}
			want := map[string]string{
				"in-process": `cookie="s=1" from=192.0.2.7 tls=true xff=203.0.113.9 host=example.com`,
				"over TCP":   fmt.Sprintf(`cookie="s=1" from=127.0.0.1 tls=false xff=203.0.113.9 host=%s`, strings.TrimPrefix(srv.URL, "http://")),
			}[name]
			if r := c.Get("/echo"); r.Body != want {
				t.Fatalf("after /set: %s, want %s", r.Body, want)
			}
			c.Get("/del")
			if r := c.Get("/echo"); !strings.HasPrefix(r.Body, `cookie="" `) {
				t.Fatalf("after /del (MaxAge -1): %s", r.Body)
			}
		})
	}
}

// fatalTB records the first failure and ends the goroutine, as t.Fatal does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// failure runs fn and returns how it failed ("" if it did not).
func failure(t *testing.T, fn func(testing.TB)) string {
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() { defer close(done); fn(f) }()
	<-done
	return f.msg
}

func TestCSRFIsScrapedOrFailsWithThePage(t *testing.T) {
	page := Reply{Status: 401, Body: `<input type="hidden" name="csrf_token" value="tok-1">`}
	if got := page.CSRF(t); got != "tok-1" {
		t.Fatalf("CSRF = %q", got)
	}
	msg := failure(t, func(tb testing.TB) { Reply{Status: 403, Body: "Not available from your network"}.CSRF(tb) })
	if !strings.Contains(msg, "status 403") || !strings.Contains(msg, "Not available from your network") {
		t.Fatalf("the failure does not show the status and the page: %q", msg)
	}
}

func TestSignInPostsTheTwoFormsWithFreshTokens(t *testing.T) {
	var posted []string
	n := 0
	door := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n++
		if r.Method == "GET" {
			fmt.Fprintf(w, `<form><input name="csrf_token" value="tok-%d"></form>`, n)
			return
		}
		_ = r.ParseForm()
		posted = append(posted, r.PostForm.Encode())
		w.WriteHeader(http.StatusSeeOther)
	})
	c := New(t, HandlerTransport(door, "192.0.2.1:1"), "http://example.com")
	r := c.SignIn("/admin/", "ops@example.com", "pw", func() string {
		if n != 3 {
			t.Errorf("the code was asked for after %d requests, want 3 (before the code page's POST)", n)
		}
		return "123456"
	})
	want := []string{LoginForm("tok-1", "ops@example.com", "pw", "").Encode(), CodeForm("tok-3", "123456").Encode()}
	if r.Status != http.StatusSeeOther || fmt.Sprint(posted) != fmt.Sprint(want) {
		t.Fatalf("status %d, posted %q, want %q", r.Status, posted, want)
	}
	if f := LoginForm("t", "e", "p", "INC-1"); f.Get(FieldReason) != "INC-1" || f.Get(FieldStep) != StepLogin {
		t.Fatalf("LoginForm with a reason: %v", f)
	}
}

func TestWebhookRecordsAnswersAndWaits(t *testing.T) {
	hook := StartWebhook(t)
	hook.SetStatus(500)
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for _, body := range []string{`{"event":"a","n":1}`, `not json`, `{"event":"b"}`} {
			resp, err := http.Post(hook.URL+"/hook", "application/json", strings.NewReader(body))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != 500 {
					t.Errorf("the webhook answered %d, want 500", resp.StatusCode)
				}
			}
		}
	}()
	if r := hook.WaitEvent(t, "b"); string(r.Body) != `{"event":"b"}` {
		t.Fatalf("WaitEvent(b): %s", r.Body)
	}
	reqs := hook.Wait(t, 3)
	if r := reqs[1]; r.Method != "POST" || r.Path != "/hook" || string(r.Body) != "not json" || r.JSON != nil ||
		r.Header.Get("Content-Type") != "application/json" || reqs[0].JSON["n"] != 1.0 {
		t.Fatalf("recorded: %+v", reqs)
	}
	if hook.Count("a") != 1 || hook.Count("c") != 0 || len(hook.Events()) != 2 {
		t.Fatalf("Count(a) %d, Events %v", hook.Count("a"), hook.Events())
	}

	<-sent

	// Hanging: no answer; the sender gives up (a loopback answer takes far
	// less than the bound).
	hook.Hang()
	hc := &http.Client{Timeout: 300 * time.Millisecond}
	if resp, err := hc.Post(hook.URL, "application/json", strings.NewReader("{}")); err == nil {
		resp.Body.Close()
		t.Fatalf("the hanging webhook answered %d", resp.StatusCode)
	}
	if len(hook.Requests()) != 4 {
		t.Fatalf("the hanging webhook recorded %d requests, want 4", len(hook.Requests()))
	}
}

func TestLogsFindMatchesTheMessageAndEveryField(t *testing.T) {
	logs := ReadLogs(strings.NewReader(`{"level":"error","msg":"delivery failed","channel":"webhook","status":500}
Caddy's plain output
{"level":"error","msg":"delivery failed","channel":"code_email","error":"connection refused"}
{"level":"warn","msg":"half a line`))
	if len(logs) != 2 || len(logs.All("delivery failed")) != 2 {
		t.Fatalf("read %d lines: %v", len(logs), logs)
	}
	if l := logs.Find("delivery failed", map[string]string{"status": "500", "level": "error"}); l == nil || l["channel"] != "webhook" {
		t.Fatalf("Find with a number field: %v", l)
	}
	for _, fields := range []map[string]string{{"channel": "webhook", "status": "404"}, {"channel": "code"}, {"missing": ""}} {
		if l := logs.Find("delivery failed", fields); l != nil {
			t.Errorf("Find(%v) = %v, want none", fields, l)
		}
	}
	refused := logs.Where(func(e map[string]any) bool { return strings.Contains(fmt.Sprint(e["error"]), "refused") })
	if len(refused) != 1 || refused.Find("delivery failed", nil)["channel"] != "code_email" {
		t.Fatalf("Where: %v", refused)
	}
	if l := ReadLogFile(t.TempDir() + "/none.log"); len(l) != 0 {
		t.Fatalf("a missing file: %v", l)
	}
	reads := 0
	l := WaitLog(t, func() Logs {
		if reads++; reads < 3 {
			return nil
		}
		return logs
	}, "delivery failed", map[string]string{"channel": "code_email"})
	if reads != 3 || l["error"] != "connection refused" {
		t.Fatalf("WaitLog after %d reads: %v", reads, l)
	}
}
