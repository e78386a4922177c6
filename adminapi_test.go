// The admin API against a running Caddy (in this process): status, unlock,
// revoke.

package breakglass

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

func adminCall(t *testing.T, admin, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+admin+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v map[string]any
	_ = json.Unmarshal(b, &v)
	return resp.StatusCode, v
}

func TestAdminAPIStatusUnlockAndRevoke(t *testing.T) {
	for _, mode := range []string{"memory", "storage"} {
		t.Run(mode, func(t *testing.T) { testAdminAPI(t, mode) })
	}
}

func testAdminAPI(t *testing.T, mode string) {
	w := newWorld(t)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	store := t.TempDir()
	cfg := strings.Replace(w.caddyfile(2, ""), "admin off", "admin "+admin+"\n\tstorage file_system "+store, 1)
	cfg = strings.Replace(cfg, "session_ttl 1h", "session_ttl 1h\n\t\tstate "+mode, 1)
	w.load(cfg, "caddyfile")

	// Lock a client: the status shows it, never a code.
	bad := w.kit("127.0.0.3")
	bad.Login("/admin/", "ops@example.com", "wrong", "", nil)
	bad.Login("/admin/", "ops@example.com", "wrong", "", nil)
	code, st := adminCall(t, admin, "GET", "/break_glass/status", "")
	if code != 200 {
		t.Fatalf("status: %d %v", code, st)
	}
	locked, _ := st["locked_clients"].([]any)
	if len(locked) != 1 || locked[0].(map[string]any)["client"] != "127.0.0.3" || locked[0].(map[string]any)["failures"] != float64(2) {
		t.Fatalf("locked_clients: %v", st["locked_clients"])
	}
	ids, _ := st["identities"].([]any)
	if len(ids) != 1 || ids[0].(map[string]any)["email"] != "ops@example.com" {
		t.Fatalf("identities: %v", st["identities"])
	}
	if s, _ := st["settings"].(map[string]any); s["max_attempts"] != float64(2) || s["state"] != mode {
		t.Fatalf("settings: %v", st["settings"])
	}

	// Unlock it: it may try again.
	if code, v := adminCall(t, admin, "POST", "/break_glass/unlock", `{"client": "127.0.0.3"}`); code != 200 {
		t.Fatalf("unlock: %d %v", code, v)
	}
	if r := bad.Get("/admin/"); r.Status != http.StatusUnauthorized {
		t.Fatalf("after unlock: %d, want the login page", r.Status)
	}
	if code, _ := adminCall(t, admin, "POST", "/break_glass/unlock", `{"client": "127.0.0.3"}`); code != 404 {
		t.Fatalf("unlocking an untracked client: %d, want 404", code)
	}
	if code, v := adminCall(t, admin, "POST", "/break_glass/unlock", `{"client": "not-an-ip"}`); code != 400 || !strings.Contains(fmt.Sprint(v["error"]), "not an IP") {
		t.Fatalf("unlocking a bad address: %d %v", code, v)
	}

	// Two sessions, one pending code; revoke ends both sessions.
	a, b := w.kit("127.0.0.2"), w.kit("127.0.0.4")
	w.signIn(a)
	w.smtp.waitMails(t, 3) // its code and two alerts, before the next sign-in reads the mailbox
	w.signIn(b)
	w.smtp.waitMails(t, 6)
	pending := w.kit("127.0.0.1")
	pending.Login("/admin/", "ops@example.com", testPassword, "", nil)
	_, st = adminCall(t, admin, "GET", "/break_glass/status", "")
	id := st["identities"].([]any)[0].(map[string]any)
	if id["live_sessions"] != float64(2) || id["code_pending"] != true {
		t.Fatalf("identity status: %v", id)
	}
	raw, _ := json.Marshal(st)
	if codeRE.Match(raw) && strings.Contains(string(raw), `"code"`) {
		t.Fatalf("the status shows a code: %s", raw)
	}
	if code, v := adminCall(t, admin, "POST", "/break_glass/revoke", `{}`); code != 200 || v["revoked"] != float64(2) {
		t.Fatalf("revoke: %d %v", code, v)
	}
	for _, c := range []*bgtest.Client{a, b} {
		if r := c.Get("/admin/"); r.Status != http.StatusUnauthorized {
			t.Fatalf("%s after revoke: %d", c.Name, r.Status)
		}
	}
	// With state storage, the revoke is written for the other instances.
	if epochs, _ := filepath.Glob(filepath.Join(store, "break_glass", "epochs", "*")); (len(epochs) == 1) != (mode == "storage") {
		t.Fatalf("state %s: revocation epochs in storage: %v", mode, epochs)
	}
	if code, _ := adminCall(t, admin, "POST", "/break_glass/revoke", `{"email": "nobody@example.com"}`); code != 404 {
		t.Fatalf("revoking an unknown email: %d, want 404", code)
	}
	bgtest.WaitLog(t, w.log, "break-glass admin: sessions revoked", map[string]string{"level": "warn"})
}

// A config that fails to load leaves the running one, and its app, current.
func TestAdminAPIKeepsTheRunningAppAfterAFailedReload(t *testing.T) {
	w := newWorld(t)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	good := strings.Replace(w.caddyfile(2, ""), "admin off", "admin "+admin, 1)
	w.load(good, "caddyfile")
	bad := strings.Replace(good, "alert_emails sec@example.com soc@example.com", "alert_emails not-an-address", 1)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(bad), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err == nil {
		t.Fatal("the bad config loaded")
	}
	if code, v := adminCall(t, admin, "GET", "/break_glass/status", ""); code != 200 {
		t.Fatalf("status after a failed reload: %d %v", code, v)
	}
	if got := currentApp.Load(); got == nil || got.state == nil {
		t.Fatal("no current app after a failed reload")
	}
}
