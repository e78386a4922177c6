// Tests of alert delivery (per-recipient isolation, webhook payload and
// failures) and of the bounded background runner.

package breakglass

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"go.uber.org/goleak"
	"go.uber.org/zap"
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

// logsWith are the entries of l with msg and these fields, compared as
// Logs.Find compares them.
func logsWith(l bgtest.Logs, msg string, fields map[string]string) bgtest.Logs {
	return l.Where(func(e map[string]any) bool { return bgtest.Logs{e}.Find(msg, fields) != nil })
}

func TestAlertEmailsAreSentOnePerRecipientAndOneFailureStopsNoOther(t *testing.T) {
	srv := startSMTP(t, smtpOptions{rejectRcpt: []string{"gone@example.com"}})
	st := newTestState(t)
	log, buf := jsonLogger()
	h := &alerts{state: st, mailer: testMailer(t, srv.Addr, SMTPConfig{TLS: "none"}),
		emails: []string{"sec@example.com", "gone@example.com", "soc@example.com"}}
	h.send(newEvent(eventLogin, "ops@example.com", "192.0.2.10", "admin.example.com", "", time.Now()), log)
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
	logs := buf.Logs()
	failed := logsWith(logs, "break-glass delivery failed", map[string]string{"recipient": "gone@example.com"})
	if len(failed) != 1 || failed[0]["level"] != "error" {
		t.Fatalf("want one ERROR naming gone@example.com, got %v", logs)
	}
	if n := len(logs.All("break-glass delivery succeeded")); n != 2 {
		t.Fatalf("%d successes logged, want 2", n)
	}
}

func TestWebhookGetsTheLoginEventAsJSON(t *testing.T) {
	hook := bgtest.StartWebhook(t)
	st := newTestState(t)
	log, buf := jsonLogger()
	h := &alerts{state: st, webhooks: []*webhook{{url: hook.URL + "/hook", host: "hook"}}}
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.FixedZone("X", 3600))
	h.send(newEvent(eventLogin, "ops@example.com", "192.0.2.10", "admin.example.com", "", at), log)
	st.deliveries.close(time.Minute)

	req := hook.Wait(t, 1)[0]
	v := req.JSON
	if v == nil {
		t.Fatalf("webhook body %q is not a JSON object", req.Body)
	}
	for k, w := range map[string]string{"event": "break_glass_login", "ip": "192.0.2.10", "severity": "critical", "timestamp": "2026-11-25T11:00:00Z"} {
		if v[k] != w {
			t.Errorf("%s = %v, want %q", k, v[k], w)
		}
	}
	if msg, _ := v["message"].(string); !strings.Contains(msg, "192.0.2.10") || !strings.Contains(msg, "ops@example.com") {
		t.Errorf("message = %q", msg)
	}
	if ctype := req.Header.Get("Content-Type"); ctype != "application/json" {
		t.Errorf("Content-Type = %q", ctype)
	}
	if logs := buf.Logs(); len(logsWith(logs, "break-glass delivery succeeded", map[string]string{"channel": "webhook"})) != 1 {
		t.Errorf("no success logged: %v", logs)
	}
}

func TestWebhookFailuresAreLoggedAtError(t *testing.T) {
	override(t, &webhookTimeout, 300*time.Millisecond)

	status500 := bgtest.StartWebhook(t)
	status500.SetStatus(http.StatusInternalServerError)
	// A redirect to a port that refuses: followed, the error would not say 302.
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.1:1/elsewhere", http.StatusFound)
	}))
	defer redirect.Close()
	silent := bgtest.StartWebhook(t)
	silent.Hang()
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
			log, buf := jsonLogger()
			h := &alerts{state: st, webhooks: []*webhook{{url: tc.url + "/hook/SECRET-TOKEN", host: "hook"}}}
			h.send(newEvent(eventLogin, "ops@example.com", "192.0.2.10", "h", "", time.Now()), log)
			st.deliveries.close(time.Minute)
			logs := buf.Logs()
			e := logs.All("break-glass delivery failed")
			if len(e) != 1 || e[0]["level"] != "error" {
				t.Fatalf("want one ERROR, got %v", logs)
			}
			if strings.Contains(fmt.Sprint(e[0]), "SECRET-TOKEN") {
				t.Fatalf("the webhook URL's token is in the log: %v", e[0])
			}
			if s, _ := e[0]["error"].(string); !strings.Contains(s, tc.want) {
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
	override(t, &webhookTimeout, time.Minute)
	override(t, &deliveryGrace, 100*time.Millisecond)

	// The servers stop as the subtest ends, before goleak looks.
	t.Run("stop", func(t *testing.T) {
		srv := startSMTP(t, smtpOptions{delay: time.Minute}) // accepts, then sits on DATA
		silent := bgtest.StartWebhook(t)
		silent.Hang()
		d, err := newState()
		if err != nil {
			t.Fatal(err)
		}
		st := d.(*state)
		m := testMailer(t, srv.Addr, SMTPConfig{TLS: "none"})
		m.timeout = time.Minute
		h := &alerts{state: st, mailer: m, emails: []string{"a@example.com", "b@example.com"}, webhooks: []*webhook{{url: silent.URL, host: "silent"}}}
		for range 5 {
			h.send(newEvent(eventLogin, "ops@example.com", "192.0.2.10", "h", "", time.Now()), zap.NewNop())
		}
		time.Sleep(200 * time.Millisecond) // let them get stuck
		start := time.Now()
		if err := st.Destruct(); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("stopping waited %v: deliveries were not cancelled", d)
		}
	})
}

func TestAlertMailsAreBoundedWhateverTheInputs(t *testing.T) {
	srv := startSMTP(t, smtpOptions{longLines: true})
	m := testMailer(t, srv.Addr, SMTPConfig{TLS: "none"})
	for name, ev := range hostileInputs() {
		t.Run(name, func(t *testing.T) {
			before := len(srv.Mails())
			// The real path: alertMail, then go-mail, then SMTP.
			if err := m.send(context.Background(), alertMail("sec@example.com", ev)); err != nil {
				t.Fatal(err)
			}
			mails := srv.Mails()
			if len(mails) != before+1 {
				t.Fatalf("%d mails arrived, want 1", len(mails)-before)
			}
			got := mails[before]
			// RFC 5322 §2.1.1: a line is at most 998 octets.
			for i, line := range strings.Split(string(got.Raw), "\r\n") {
				if len(line) > 998 {
					t.Fatalf("line %d of the mail is %d bytes: %.120q…", i+1, len(line), line)
				}
			}
			if len(got.Subject) > 998 || !utf8.ValidString(got.Subject) || !strings.HasPrefix(got.Subject, "[break-glass]") {
				t.Errorf("subject (%d bytes): %q", len(got.Subject), got.Subject)
			}
			got.Text = strings.ReplaceAll(got.Text, "\r\n", "\n")
			for part, body := range map[string]string{"text": got.Text, "html": got.HTML} {
				if !utf8.ValidString(body) {
					t.Errorf("the %s part is not valid UTF-8", part)
				}
				for _, line := range strings.Split(body, "\n") {
					if len(line) > 998 {
						t.Errorf("a decoded %s line is %d bytes", part, len(line))
					}
				}
			}
			if ev.Event == eventLogin && !strings.Contains(got.Text, "Reason:     "+ev.Reason+"\n") {
				t.Errorf("the text part lost the reason: %q", got.Text)
			}
		})
	}
}

// hookMessages are the messages of the alerts the webhook got for host.
func hookMessages(hook *bgtest.Webhook, host string) []string {
	var msgs []string
	for _, ev := range hook.Events() {
		if ev["host"] == host {
			msgs = append(msgs, fmt.Sprint(ev["message"]))
		}
	}
	return msgs
}

func TestCodeIssuedAlertsGoOncePerCredentialPerWindow(t *testing.T) {
	clk := useTestClock(t)
	hook := bgtest.StartWebhook(t)
	st := newTestState(t)
	log, buf := jsonLogger()
	al := &alerts{state: st, window: 15 * time.Minute, webhooks: []*webhook{{url: hook.URL, host: "hook"}}}
	ev := func(host string) alertEvent {
		return newEvent(eventCodeIssued, "ops@example.com", "192.0.2.10", host, "INC-7", now())
	}

	// A burst of 20 code requests for one credential, one a second.
	for range 20 {
		al.bounded(ev("a.example.com"), &events[evCodeIssued], "scope-a", log)
		clk.Advance(time.Second)
	}
	// Another credential is not held back by the first.
	al.bounded(ev("b.example.com"), &events[evCodeIssued], "scope-b", log)
	held := buf.Logs().All("break-glass code_issued alert held back: one already went for this credential in this window; the next one will count it")
	if len(held) != 19 || held[0]["level"] != "warn" {
		t.Fatalf("%d held back logged, want 19 WARN", len(held))
	}
	hook.Wait(t, 2)
	// After the window, the next alert counts those held back, since the
	// first of them (at 12:00:01).
	clk.Advance(15 * time.Minute)
	al.bounded(ev("a.example.com"), &events[evCodeIssued], "scope-a", log)
	hook.Wait(t, 3)
	st.notices.close(time.Minute) // every alert sent has arrived

	msgs := hookMessages(hook, "a.example.com")
	if len(msgs) != 2 {
		t.Fatalf("%d alerts for the first credential, want 2: %q", len(msgs), msgs)
	}
	if strings.Contains(msgs[0], "not alerted") {
		t.Errorf("the first alert counts held-back ones: %q", msgs[0])
	}
	if want := "19 other code requests for this credential were not alerted one by one since 2026-11-25T12:00:01Z"; !strings.Contains(msgs[1], want) {
		t.Errorf("the alert after the window: %q, want it to say %q", msgs[1], want)
	}
	if n := len(hookMessages(hook, "b.example.com")); n != 1 {
		t.Errorf("%d alerts for the second credential, want 1", n)
	}
}

func TestCodeIssuedAlertsDoNotDependOnTheDeliveriesQueue(t *testing.T) {
	hook := bgtest.StartWebhook(t)
	st := newTestState(t)
	log, buf := jsonLogger()
	h := &alerts{state: st, webhooks: []*webhook{{url: hook.URL, host: "hook"}}}
	// With the queue of code mails and login alerts refusing everything,
	// a code_issued alert still goes: it has its own queue.
	st.deliveries.close(0)
	h.send(newEvent(eventCodeIssued, "ops@example.com", "192.0.2.10", "a.example.com", "", time.Now()), log)
	st.notices.close(time.Minute)
	if n := len(hookMessages(hook, "a.example.com")); n != 1 {
		t.Fatalf("%d code_issued alerts delivered, want 1; logs: %v", n, buf.Logs())
	}
}

func TestCodeAlertLimiterStaysBounded(t *testing.T) {
	var l codeAlerts
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for i := range maxCodeAlertScopes + 500 {
		if ok, _, _ := l.allow(fmt.Sprint("scope-", i), t0, time.Minute); !ok {
			t.Fatalf("the first alert of scope %d was held back", i)
		}
	}
	if n := l.size(); n > maxCodeAlertScopes {
		t.Fatalf("%d scopes tracked, want at most %d", n, maxCodeAlertScopes)
	}
	// Entries end with their window: the next insert sweeps them.
	if ok, _, _ := l.allow("late", t0.Add(time.Minute), time.Minute); !ok {
		t.Fatal("held back")
	}
	if n := l.size(); n != 1 {
		t.Fatalf("%d scopes tracked after their windows ended, want 1", n)
	}
	// An ended entry that still counts held-back alerts is kept until the
	// next alert of its scope reports them.
	l.allow("held", t0, time.Minute)
	l.allow("held", t0.Add(time.Second), time.Minute)
	l.allow("other", t0.Add(2*time.Minute), time.Minute)
	if ok, held, since := l.allow("held", t0.Add(3*time.Minute), time.Minute); !ok || held != 1 || !since.Equal(t0.Add(time.Second)) {
		t.Fatalf("allow = %v, %d, %v; want true, 1, %v", ok, held, since, t0.Add(time.Second))
	}
}
