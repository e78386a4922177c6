// The `caddy break-glass` status, unlock and revoke commands against the
// admin API of a running Caddy (in this process).

package breakglass

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// runCommand runs one break-glass subcommand and returns what it printed.
func runCommand(t *testing.T, c *cobra.Command, args ...string) (string, error) {
	t.Helper()
	var buf bytes.Buffer
	override[io.Writer](t, &out, &buf)
	c.SetArgs(args)
	c.SetOut(&buf)
	c.SetErr(&buf)
	err := c.Execute()
	return buf.String(), err
}

func TestCommandsStatusUnlockRevoke(t *testing.T) {
	w := newWorld(t)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	w.load(strings.Replace(w.caddyfile(2, ""), "admin off", "admin "+admin+"\n\tstorage file_system "+t.TempDir(), 1), "caddyfile")

	bad := w.kit("127.0.0.3")
	bad.Login("/admin/", "ops@example.com", "wrong", "", nil)
	bad.Login("/admin/", "ops@example.com", "wrong", "", nil)
	txt, err := runCommand(t, statusCommand(), "--address", admin)
	if err != nil {
		t.Fatalf("status: %v\n%s", err, txt)
	}
	for _, want := range []string{"ops@example.com", "127.0.0.3", "CLIENT", "Last drill: none recorded", "max_attempts=2", "state=memory"} {
		if !strings.Contains(txt, want) {
			t.Fatalf("status lacks %q:\n%s", want, txt)
		}
	}
	js, err := runCommand(t, statusCommand(), "--address", admin, "--json")
	var st statusReply
	if err != nil || json.Unmarshal([]byte(js), &st) != nil || len(st.LockedClients) != 1 || st.LockedClients[0].Failures != 2 {
		t.Fatalf("status --json: %v %+v\n%s", err, st, js)
	}

	if txt, err := runCommand(t, unlockCommand(), "--address", admin, "127.0.0.3"); err != nil || !strings.Contains(txt, "Unlocked 127.0.0.3") {
		t.Fatalf("unlock: %v\n%s", err, txt)
	}
	if r := bad.Get("/admin/"); r.Status != http.StatusUnauthorized {
		t.Fatalf("after unlock: %d, want the login page", r.Status)
	}
	if _, err := runCommand(t, unlockCommand(), "--address", admin, "127.0.0.3"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("unlocking an untracked client: %v, want an error with 404", err)
	}
	if _, err := runCommand(t, unlockCommand(), "--address", admin); err == nil {
		t.Fatal("unlock without an address did not fail")
	}

	c := w.kit("127.0.0.2")
	w.signIn(c)
	if r := c.Get("/admin/"); r.Status != http.StatusOK {
		t.Fatalf("signed in: %d", r.Status)
	}
	txt, err = runCommand(t, revokeCommand(), "--address", admin, "--email", "OPS@example.com")
	if err != nil || !strings.Contains(txt, "Revoked the break-glass sessions of OPS@example.com") || !strings.Contains(txt, "(1 live here)") {
		t.Fatalf("revoke: %v\n%s", err, txt)
	}
	if r := c.Get("/admin/"); r.Status != http.StatusUnauthorized {
		t.Fatalf("after revoke: %d", r.Status)
	}
	if _, err := runCommand(t, revokeCommand(), "--address", admin, "--email", "nobody@example.com"); err == nil {
		t.Fatal("revoking an unknown email did not fail")
	}
}
