//go:build e2e

// Cluster mode: two Caddy processes on one storage folder behave as one door.

package e2e

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
)

func clusterSite(mp *mailpit, storage string) string {
	s := defaultSite(mp)
	s.servers = fmt.Sprintf("storage file_system %s", storage)
	cf := s.caddyfile()
	return strings.Replace(cf, "\tbreak_glass {\n\t\tmax_attempts", "\tbreak_glass {\n\t\tstate storage\n\t\trefresh_interval 1s\n\t\tmax_attempts", 1)
}

func TestClusterOfTwoInstancesOnOneStorage(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	storage := filepath.Join(t.TempDir(), "storage")
	cfg := clusterSite(mp, storage)
	a := startCaddy(t, cfg, "caddyfile")
	b := startCaddy(t, cfg, "caddyfile")
	seen := map[string]bool{}

	// Step 1 on A, the code on B.
	opA := newClient(t, a.base, "127.0.0.2")
	opB := opA.At(b.base)
	if r := opA.Login("/admin/", "ops@example.com", testPassword, "", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("password on A: %d", r.Status)
	}
	codePage := opB.Get("/admin/")
	if codePage.Status != http.StatusOK || !strings.Contains(codePage.Body, `name="code"`) {
		t.Fatalf("B does not show the code page for A's login: %d", codePage.Status)
	}
	code, _ := mp.waitCode(t, seen)
	if r := opB.Do("POST", "/admin/", bgtest.CodeForm(codePage.CSRF(t), code), nil); r.Status != http.StatusSeeOther {
		t.Fatalf("code on B: %d\n%s", r.Status, r.Body)
	}
	for name, c := range map[string]*bgtest.Client{"A": opA, "B": opB} {
		if r := c.Get("/admin/"); r.Status != 200 || !strings.Contains(r.Body, "Signed in as ops@example.com") {
			t.Fatalf("the session on %s: %d", name, r.Status)
		}
	}

	// Wrong passwords on A until locked: B says 429 too.
	attacker := newClient(t, a.base, "127.0.0.3")
	for i, want := range []int{401, 401, 429} {
		if r := attacker.Login("/admin/", "ops@example.com", "wrong", "", nil); r.Status != want {
			t.Fatalf("failure %d on A: %d, want %d", i+1, r.Status, want)
		}
	}
	if r := attacker.At(b.base).Get("/admin/"); r.Status != http.StatusTooManyRequests {
		t.Fatalf("B after the lockout on A: %d, want 429", r.Status)
	}

	// A second session, to outlive a restart; then logout of the first on B.
	op2 := newClient(t, b.base, "127.0.0.4")
	signIn(t, op2, mp, seen)
	u, _ := url.Parse(a.base)
	saved := opA.Jar().Cookies(u)
	if r := opB.Get("/admin/?break_glass=logout"); r.Status != 200 {
		t.Fatalf("logout on B: %d", r.Status)
	}
	opA.Jar().SetCookies(u, saved) // the cookie, replayed on A
	within(t, 10*time.Second, "A still accepts the session logged out on B after 10 s (refresh_interval 1s)",
		func() bool { return opA.Get("/admin/").Status == http.StatusUnauthorized })

	// Stop both, start both: the lockout and the live session are still there.
	a.stop()
	b.stop()
	a2 := startCaddy(t, cfg, "caddyfile")
	b2 := startCaddy(t, cfg, "caddyfile")
	if r := attacker.At(a2.base).Get("/admin/"); r.Status != http.StatusTooManyRequests {
		t.Fatalf("after restarting both, the lockout is gone: %d", r.Status)
	}
	for name, base := range map[string]string{"A": a2.base, "B": b2.base} {
		if r := op2.At(base).Get("/admin/"); r.Status != 200 {
			t.Fatalf("after restarting both, the session is gone on %s: %d", name, r.Status)
		}
	}

	// The storage fails (its folder is replaced by a file): sign-ins get
	// 503, the open session keeps working.
	if err := os.Rename(storage, storage+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(storage, []byte("not a folder"), 0o600); err != nil {
		t.Fatal(err)
	}
	fresh := newClient(t, a2.base, "127.0.0.5")
	if r := fresh.Get("/admin/"); r.Status != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
		t.Fatalf("the sign-in page with the storage gone: %d, want 503 with Retry-After", r.Status)
	}
	a2.waitLog(t, "break-glass state unavailable: sign-in refused", map[string]string{"level": "error"})
	if r := op2.At(a2.base).Get("/admin/"); r.Status != 200 {
		t.Fatalf("the open session stopped working with the storage gone: %d", r.Status)
	}
}

// `caddy break-glass revoke` on one instance ends a session issued by the
// other, at its next refresh (with no logout ever written before).
func TestClusterRevokeReachesTheOtherInstance(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	cfg := clusterSite(mp, filepath.Join(t.TempDir(), "storage"))
	a := startCaddy(t, cfg, "caddyfile")
	b := startCaddy(t, cfg, "caddyfile")
	op := newClient(t, b.base, "127.0.0.2")
	signIn(t, op, mp, map[string]bool{})
	if r := op.Get("/admin/"); r.Status != 200 {
		t.Fatalf("session on B: %d", r.Status)
	}
	if out := stdout(t, "break-glass", "revoke", "--address", a.admin); !strings.Contains(out, "Revoked every break-glass session") {
		t.Fatalf("revoke on A: %s", out)
	}
	within(t, 10*time.Second, "B still accepts the session 10 s after a revoke on A (refresh_interval 1s)",
		func() bool { return op.Get("/admin/").Status == http.StatusUnauthorized })
}
