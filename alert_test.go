// Tests of alert delivery (per-recipient isolation, webhook payload and
// failures) and of the bounded background runner.

package breakglass

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// newTestState makes a fresh shared state, destroyed when the test ends.
func newTestState(t *testing.T) *state {
	t.Helper()
	d, err := newState()
	if err != nil {
		t.Fatal(err)
	}
	st := d.(*state)
	t.Cleanup(func() { _ = st.Destruct() })
	return st
}

func observedLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// startSilentServer is an HTTP server that takes requests and answers none
// until the test ends.
func startSilentServer(t testing.TB) *httptest.Server {
	hang := make(chan struct{})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(hang); s.Close() })
	return s
}

func plainMailer(addr string) *mailer {
	m, err := (&SMTPConfig{Address: addr, TLS: "none", From: "Break Glass <bg@example.com>"}).provision(caddy.NewReplacer(), "smtp")
	if err != nil {
		panic(err)
	}
	return m
}

func TestAlertEmailsAreSentOnePerRecipientAndOneFailureStopsNoOther(t *testing.T) {
	srv := startSMTP(t, smtpOptions{rejectRcpt: []string{"gone@example.com"}})
	st := newTestState(t)
	log, logs := observedLogger()
	h := &Handler{state: st, mailer: plainMailer(srv.Addr),
		alertEmails: []string{"sec@example.com", "gone@example.com", "soc@example.com"}}
	h.sendAlerts(newEvent(eventLogin, "ops@example.com", "192.0.2.10", "admin.example.com", "", time.Now()), log)
	st.deliveries.close(time.Minute) // waits for every delivery

	got := map[string]receivedMail{}
	for _, m := range srv.Mails() {
		if len(m.To) != 1 {
			t.Fatalf("one mail went to %v: recipients must get a mail each", m.To)
		}
		got[m.To[0]] = m
	}
	for _, to := range []string{"sec@example.com", "soc@example.com"} {
		m, ok := got[to]
		if !ok {
			t.Fatalf("%s got no alert; mails: %v", to, got)
		}
		if !strings.Contains(m.Subject, "192.0.2.10") || !strings.Contains(m.Text, "ops@example.com") || !strings.Contains(m.HTML, "192.0.2.10") {
			t.Errorf("alert to %s lacks the facts: %+v", to, m)
		}
	}
	failed := logs.FilterMessage("break-glass delivery failed").FilterField(zap.String("recipient", "gone@example.com")).All()
	if len(failed) != 1 || failed[0].Level != zapcore.ErrorLevel {
		t.Fatalf("want one ERROR naming gone@example.com, got %v", logs.All())
	}
	if n := logs.FilterMessage("break-glass delivery succeeded").Len(); n != 2 {
		t.Fatalf("%d successes logged, want 2", n)
	}
}

func TestWebhookGetsTheLoginEventAsJSON(t *testing.T) {
	got := make(chan map[string]any, 1)
	var ctype string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctype = r.Header.Get("Content-Type")
		var v map[string]any
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &v); err != nil {
			t.Errorf("webhook body %q: %v", body, err)
		}
		got <- v
	}))
	defer hook.Close()
	st := newTestState(t)
	log, logs := observedLogger()
	h := &Handler{state: st, webhooks: []*webhook{{url: hook.URL + "/hook", host: "hook"}}}
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.FixedZone("X", 3600))
	h.sendAlerts(newEvent(eventLogin, "ops@example.com", "192.0.2.10", "admin.example.com", "", at), log)
	st.deliveries.close(time.Minute)

	v := <-got
	want := map[string]string{
		"event": "break_glass_login", "ip": "192.0.2.10", "severity": "critical",
		"timestamp": "2026-11-25T11:00:00Z",
	}
	for k, w := range want {
		if v[k] != w {
			t.Errorf("%s = %v, want %q", k, v[k], w)
		}
	}
	if msg, _ := v["message"].(string); !strings.Contains(msg, "192.0.2.10") || !strings.Contains(msg, "ops@example.com") {
		t.Errorf("message = %q", msg)
	}
	if ctype != "application/json" {
		t.Errorf("Content-Type = %q", ctype)
	}
	if logs.FilterMessage("break-glass delivery succeeded").FilterField(zap.String("channel", "webhook")).Len() != 1 {
		t.Errorf("no success logged: %v", logs.All())
	}
}

func TestWebhookFailuresAreLoggedAtError(t *testing.T) {
	old := webhookTimeout
	webhookTimeout = 300 * time.Millisecond
	t.Cleanup(func() { webhookTimeout = old })

	status500 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer status500.Close()
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.1:1/elsewhere", http.StatusFound)
	}))
	defer redirect.Close()
	hang := make(chan struct{})
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-hang }))
	defer silent.Close()
	defer close(hang)
	refused := httptest.NewServer(http.NotFoundHandler())
	refusedURL := refused.URL
	refused.Close()

	for name, tc := range map[string]struct {
		url  string
		want string
	}{
		"non-2xx":  {status500.URL, "500"},
		"redirect": {redirect.URL, "302"},
		"timeout":  {silent.URL, "deadline exceeded"},
		"refused":  {refusedURL, "refused"},
	} {
		t.Run(name, func(t *testing.T) {
			st := newTestState(t)
			log, logs := observedLogger()
			h := &Handler{state: st, webhooks: []*webhook{{url: tc.url + "/hook/SECRET-TOKEN", host: "hook"}}}
			h.sendAlerts(newEvent(eventLogin, "ops@example.com", "192.0.2.10", "h", "", time.Now()), log)
			st.deliveries.close(time.Minute)
			e := logs.FilterMessage("break-glass delivery failed").All()
			if len(e) != 1 || e[0].Level != zapcore.ErrorLevel {
				t.Fatalf("want one ERROR, got %v", logs.All())
			}
			if strings.Contains(fmt.Sprint(e[0].ContextMap()), "SECRET-TOKEN") {
				t.Fatalf("the webhook URL's token is in the log: %v", e[0].ContextMap())
			}
			if s := e[0].ContextMap()["error"]; !strings.Contains(s.(string), tc.want) {
				t.Fatalf("error %q does not say %q", s, tc.want)
			}
		})
	}
}

func TestDispatcherBoundsDeliveriesInFlight(t *testing.T) {
	d := newDispatcher(2)
	release := make(chan struct{})
	var ran atomic.Int32
	block := func(ctx context.Context) { ran.Add(1); <-release }
	if !d.run(block) || !d.run(block) {
		t.Fatal("the first two deliveries were refused")
	}
	if d.run(block) {
		t.Fatal("a third delivery started beyond the bound of 2")
	}
	close(release)
	d.close(time.Minute)
	if ran.Load() != 2 {
		t.Fatalf("%d deliveries ran, want 2", ran.Load())
	}
	if d.run(block) {
		t.Fatal("a closed dispatcher accepted a delivery")
	}
}

func TestStoppingCancelsSlowDeliveriesAndLeavesNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	oldTimeout, oldGrace := webhookTimeout, deliveryGrace
	webhookTimeout, deliveryGrace = time.Minute, 100*time.Millisecond
	t.Cleanup(func() { webhookTimeout, deliveryGrace = oldTimeout, oldGrace })

	srv := startSMTP(t, smtpOptions{delay: time.Minute}) // accepts, then sits on DATA
	hang := make(chan struct{})
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	d, err := newState()
	if err != nil {
		t.Fatal(err)
	}
	st := d.(*state)
	m := plainMailer(srv.Addr)
	m.timeout = time.Minute
	h := &Handler{state: st, mailer: m, alertEmails: []string{"a@example.com", "b@example.com"}, webhooks: []*webhook{{url: silent.URL, host: "silent"}}}
	for range 5 {
		h.sendAlerts(newEvent(eventLogin, "ops@example.com", "192.0.2.10", "h", "", time.Now()), zap.NewNop())
	}
	time.Sleep(200 * time.Millisecond) // let them get stuck
	start := time.Now()
	if err := st.Destruct(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("stopping waited %v: deliveries were not cancelled", d)
	}
	close(hang)
	silent.Close()
	srv.Close()
}
