// The drill against a running Caddy (in this process): every channel gets
// its drill message, the outcome is printed and recorded, and the metric
// and the status show it.

package breakglass

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/certmagic"
)

func TestDrillSendsEveryChannelAndRecordsIt(t *testing.T) {
	w := newWorld(t)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	store := t.TempDir()
	w.load(strings.Replace(w.caddyfile(3, ""), "admin off", "admin "+admin+"\n\tstorage file_system "+store, 1), "caddyfile")
	a := currentApp.Load()
	var buf bytes.Buffer
	override[io.Writer](t, &out, &buf)

	code, err := runDrill(context.Background(), a, "drill-host", false)
	if code != 0 || err != nil {
		t.Fatalf("drill with every channel up: exit %d, %v\n%s", code, err, buf.String())
	}
	// A drill code mail to the break-glass address (holding no code) and a
	// drill alert to each alert address.
	mails := w.smtp.waitMails(t, 3)
	got := map[string]receivedMail{}
	for _, m := range mails {
		got[strings.Join(m.To, ",")] = m
		if !strings.Contains(m.Subject, "DRILL") || !strings.Contains(m.Text, "DRILL") {
			t.Errorf("mail to %v is not marked as a drill: %q\n%s", m.To, m.Subject, m.Text)
		}
	}
	for _, to := range []string{"ops@example.com", "sec@example.com", "soc@example.com"} {
		if _, ok := got[to]; !ok {
			t.Fatalf("no drill mail to %s; got %v", to, mails)
		}
	}
	if codeRE.MatchString(got["ops@example.com"].Text) {
		t.Fatalf("the drill code mail holds a code:\n%s", got["ops@example.com"].Text)
	}
	ev := w.hook.Wait(t, 1)[0].JSON
	if ev["event"] != "break_glass_drill" || ev["severity"] != "info" || !strings.Contains(fmt.Sprint(ev["message"]), "DRILL") || ev["host"] != "drill-host" {
		t.Fatalf("webhook drill event: %v", ev)
	}
	table := buf.String()
	for _, want := range []string{"code_email", "alert_email  sec@example.com", "alert_email  soc@example.com", "webhook", "Drill OK: 4 channels delivered"} {
		if !strings.Contains(table, want) {
			t.Fatalf("the table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "error") {
		t.Fatalf("a channel failed:\n%s", table)
	}

	// Recorded in the config's storage; the metric and the status show it.
	st := &certmagic.FileStorage{Path: store}
	rec, ok, err := loadDrill(context.Background(), st, drillOKKey)
	if err != nil || !ok || !rec.OK || len(rec.Results) != 4 {
		t.Fatalf("recorded drill: %+v %v %v", rec, ok, err)
	}
	// The metric is the last good drill's time; the status is the last drill's.
	shown := func(after string, ok bool) {
		t.Helper()
		if m := scrape(t, admin); m["caddy_break_glass_last_drill_timestamp_seconds"] != float64(rec.Time.Unix()) {
			t.Fatalf("%s: last_drill metric %v, want %d", after, m["caddy_break_glass_last_drill_timestamp_seconds"], rec.Time.Unix())
		}
		_, status := adminCall(t, admin, "GET", "/break_glass/status", "")
		if d, _ := status["last_drill"].(map[string]any); d["ok"] != ok {
			t.Fatalf("%s: status last_drill %v", after, status["last_drill"])
		}
	}
	shown("a good drill", true)

	// The webhook fails: the drill fails, names the channel, and the last
	// good drill stays the one before.
	buf.Reset()
	w.hook.SetStatus(http.StatusServiceUnavailable)
	code, err = runDrill(context.Background(), a, "drill-host", false)
	if code == 0 || err == nil || !strings.Contains(err.Error(), "webhook") {
		t.Fatalf("drill with the webhook failing: exit %d, %v", code, err)
	}
	if !strings.Contains(buf.String(), "webhook") || !strings.Contains(buf.String(), "error:") || strings.Contains(buf.String(), "Drill OK") {
		t.Fatalf("the table does not show the failed webhook:\n%s", buf.String())
	}
	last, _, _ := loadDrill(context.Background(), st, drillKey)
	good, _, _ := loadDrill(context.Background(), st, drillOKKey)
	if last.OK || !good.Time.Equal(rec.Time) {
		t.Fatalf("after a failed drill: last %+v, last good %+v", last, good)
	}
	shown("a failed drill", false)
}

func TestDrillWithoutSMTPFailsTheCodeChannel(t *testing.T) {
	app := &App{}
	newTestHandler(t, app, nil) // dev_log_code, no smtp
	rec, err := app.drill(context.Background(), "h")
	if err != nil || rec.OK || len(rec.Results) != 1 || rec.Results[0].Channel != "code_email" || !strings.Contains(rec.Results[0].Error, "no smtp") {
		t.Fatalf("drill of a dev_log_code handler: %+v %v", rec, err)
	}
	if _, err := (&App{handlers: new(handlerRegistry), logger: app.logger}).drill(context.Background(), "h"); err == nil {
		t.Fatal("a drill with no handler did not fail")
	}
}

func TestDrillTriesEveryWebhookEvenOnOneHost(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/services/A" {
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	app := &App{}
	newTestHandler(t, app, func(h *Handler) {
		h.AlertWebhooks = []WebhookConfig{{URL: srv.URL + "/services/A"}, {URL: srv.URL + "/services/B"}}
	})
	newTestHandler(t, app, func(h *Handler) { h.AlertWebhook = srv.URL + "/services/A" }) // the same one again
	rec, err := app.drill(context.Background(), "h")
	if err != nil {
		t.Fatal(err)
	}
	var hooks []string
	for _, r := range rec.Results {
		if r.Channel == "webhook" {
			hooks = append(hooks, fmt.Sprintf("%v %s", r.OK, r.Error))
		}
	}
	if len(hooks) != 2 || !strings.Contains(strings.Join(hooks, "|"), "false webhook answered 404") || rec.OK {
		t.Fatalf("drill of two webhooks on one host: %v", hooks)
	}
}
