package breakglass

import (
	"context"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// eventRecorder is an events handler (`events { on <name> break_glass_test_recorder }`)
// that keeps what it is given, as an operator's exec handler would get it.
type eventRecorder struct{}

type recordedEvent struct {
	name   string
	origin string
	data   map[string]any
}

var (
	recordedMu sync.Mutex
	recorded   []recordedEvent
)

func init() { caddy.RegisterModule(eventRecorder{}) }

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.break_glass_test_recorder", New: func() caddy.Module { return new(eventRecorder) }}
}

func (eventRecorder) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	return nil
}

func (eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	origin := ""
	if e.Origin() != nil {
		origin = string(e.Origin().CaddyModule().ID)
	}
	recordedMu.Lock()
	defer recordedMu.Unlock()
	recorded = append(recorded, recordedEvent{name: e.Name(), origin: origin, data: e.Data})
	return nil
}

// takeEvents returns the events recorded since the last call.
func takeEvents() []recordedEvent {
	recordedMu.Lock()
	defer recordedMu.Unlock()
	out := recorded
	recorded = nil
	return out
}

func TestEventsReachCaddysEventBus(t *testing.T) {
	w := newWorld(t)
	cfg := strings.Replace(w.caddyfile(2, ""), "\tadmin off\n", `	admin off
	events {
		on break_glass_code_issued break_glass_test_recorder
		on break_glass_login break_glass_test_recorder
		on break_glass_login_failed break_glass_test_recorder
		on break_glass_lockout break_glass_test_recorder
		on break_glass_logout break_glass_test_recorder
	}
`, 1)
	w.load(cfg, "caddyfile")
	takeEvents()

	// A sign-in with a reason, then a logout, from one client.
	c := w.kit("127.0.0.2")
	if p, _ := w.signInWith(c, testPassword, "INC-42"); p.Status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", p.Status)
	}
	if r := c.Get("/admin/?break_glass=logout"); r.Status != http.StatusOK {
		t.Fatalf("logout: %d", r.Status)
	}
	// Two wrong passwords from another lock it out (max_attempts 2).
	bad := w.kit("127.0.0.3")
	for range 2 {
		bad.Login("/admin/", "ops@example.com", "wrong", "", nil)
	}

	got := takeEvents()
	var names []string
	for _, e := range got {
		names = append(names, e.name)
		if e.origin != "http.handlers.break_glass" {
			t.Errorf("%s: origin %q, want the handler", e.name, e.origin)
		}
		if e.data["host"] != "127.0.0.1" {
			t.Errorf("%s: host %v", e.name, e.data["host"])
		}
	}
	want := []string{eventCodeIssued, eventLogin, eventLogout, eventLoginFailed, eventLoginFailed, eventLockout}
	if !slices.Equal(names, want) {
		t.Fatalf("events %q, want %q", names, want)
	}
	for i, e := range got {
		wantClient, wantAccount := "127.0.0.2", "ops@example.com"
		if i >= 3 {
			wantClient = "127.0.0.3"
		}
		if e.name == eventLoginFailed || e.name == eventLockout {
			wantAccount = "" // a wrong password names no account, nor a lockout (it is of a client)
		}
		if e.data["client"] != wantClient || e.data["account"] != wantAccount {
			t.Errorf("%s: client %v, account %v; want %s, %q", e.name, e.data["client"], e.data["account"], wantClient, wantAccount)
		}
	}
	if got[0].data["reason"] != "INC-42" || got[1].data["reason"] != "INC-42" {
		t.Errorf("the reason is not in the code_issued and login events: %v, %v", got[0].data, got[1].data)
	}
	if got[3].data["failure"] != "bad_credentials" {
		t.Errorf("a failed login's data: %v", got[3].data)
	}
}

func TestEveryEventNameIsDocumented(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for _, name := range eventNames() {
		if !strings.Contains(readme, "`"+name+"`") {
			t.Errorf("README does not name the event %s", name)
		}
	}
}

// An event that alerts says something of its own: its wording is there, and
// so is every failure reason's place in the README.
func TestEveryAlertedEventHasItsWordingAndEveryFailureIsDocumented(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for kind, s := range events {
		if s.severity != "" {
			if wd, ok := alertWordings[s.name]; !ok || wd.message == "" || wd.subject == "" || wd.heading == "" {
				t.Errorf("event %d (%s) alerts, but has no wording", kind, s.name)
			}
		}
		if s.failure != "" && !strings.Contains(string(readme), "`"+s.failure+"`") {
			t.Errorf("README does not name the failure %s (of %s)", s.failure, s.name)
		}
	}
}

// eventNames are the events' names in the table, each once.
func eventNames() []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range events {
		if s.name != "" && !seen[s.name] {
			seen[s.name] = true
			out = append(out, s.name)
		}
	}
	return out
}
