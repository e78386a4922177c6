//go:build e2e

// The emergency-practice options with the built binary: a reason, code and
// login alerts on a signed webhook, a TOTP sign-in while the mail server is
// down, the audit log checked (and broken) with `caddy break-glass
// verify-audit`, and max_uses.

package e2e

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
)

// totpNow is RFC 6238 (SHA-1, 6 digits, 30 s), written here apart from the
// plugin's.
func totpNow(t *testing.T, secret string, at time.Time) string {
	key, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(secret)
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha1.New, key)
	_ = binary.Write(m, binary.BigEndian, uint64(at.Unix()/30))
	s := m.Sum(nil)
	o := s[19] & 15
	return fmt.Sprintf("%06d", (binary.BigEndian.Uint32(s[o:o+4])&0x7fffffff)%1000000)
}

func TestEmergencyPracticeOptions(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	hook := bgtest.StartWebhook(t)
	hook.SetStatus(http.StatusOK)

	// A TOTP secret from the binary itself.
	var totp struct{ Secret, URI string }
	if err := json.Unmarshal([]byte(stdout(t, "break-glass", "totp", "--email", "ops@example.com", "--json")), &totp); err != nil ||
		!strings.HasPrefix(totp.URI, "otpauth://totp/") || !strings.Contains(totp.URI, "secret="+totp.Secret) {
		t.Fatalf("caddy break-glass totp: %+v %v", totp, err)
	}
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	c := startCaddy(t, fmt.Sprintf(`{
	admin {ADMIN}
	break_glass {
		max_attempts 5
		smtp %s {
			tls none
			from "Break Glass <breakglass@example.com>"
		}
	}
}
:{PORT} {
	bind 127.0.0.1
	break_glass /admin* {
		email ops@example.com
		hash {env.BG_HASH}
		allowed_ips 127.0.0.0/8
		require_reason
		alert_on login code_issued lockout
		alert_webhook %s/hook {
			secret {env.BG_HOOK_SECRET}
		}
		totp_secret {env.BG_TOTP}
		audit_log %s
		max_uses 2
	}
	respond /admin* "Admin area" 200
}
`, mp.smtp, hook.URL, audit), "caddyfile", "BG_TOTP="+totp.Secret, "BG_HOOK_SECRET=hook-secret")

	// First use: the emailed code, with a reason; code_issued and login
	// alerts carry it, signed.
	seen := map[string]bool{}
	a := newClient(t, c.base, "127.0.0.2")
	if r := a.Login("/admin/", "ops@example.com", testPassword, "", nil); r.Status != http.StatusBadRequest || !strings.Contains(r.Body, "Give the reason") {
		t.Fatalf("no reason with require_reason: %d", r.Status)
	}
	if r := a.Login("/admin/", "ops@example.com", testPassword, "INC-77 SSO outage", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("password with a reason: %d", r.Status)
	}
	code, _ := mp.waitCode(t, seen)
	if r := a.SubmitCode("/admin/", code); r.Status != http.StatusSeeOther {
		t.Fatalf("emailed code: %d", r.Status)
	}
	for _, event := range []string{"break_glass_code_issued", "break_glass_login"} {
		r := hook.WaitEvent(t, event)
		m := hmac.New(sha256.New, []byte("hook-secret"))
		m.Write([]byte(r.Header.Get("X-Break-Glass-Timestamp") + "."))
		m.Write(r.Body)
		if r.Header.Get("X-Break-Glass-Signature") != "sha256="+hex.EncodeToString(m.Sum(nil)) || r.JSON["reason"] != "INC-77 SSO outage" {
			t.Fatalf("%s: signature %q, reason %v", event, r.Header.Get("X-Break-Glass-Signature"), r.JSON["reason"])
		}
	}
	c.waitLog(t, "break-glass login succeeded", map[string]string{"reason": "INC-77 SSO outage", "level": "warn"})
	if r := a.Get("/admin/page"); r.Status != http.StatusOK {
		t.Fatalf("session: %d", r.Status)
	}

	// Second use, with mail down: the authenticator code signs in.
	mp.stop()
	b := newClient(t, c.base, "127.0.0.3")
	if r := b.Login("/admin/", "ops@example.com", testPassword, "mail down drill", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("password: %d", r.Status)
	}
	if r := b.SubmitCode("/admin/", totpNow(t, totp.Secret, time.Now())); r.Status != http.StatusSeeOther {
		t.Fatalf("TOTP code with mail down: %d\n%s", r.Status, r.Body)
	}
	c.waitLog(t, "break-glass delivery failed", map[string]string{"channel": "code_email"})
	// max_uses 2: spent now.
	hook.WaitEvent(t, "break_glass_credential_spent")
	if r := newClient(t, c.base, "127.0.0.4").Get("/admin/"); r.Status != http.StatusForbidden || !strings.Contains(r.Body, "Credential spent") {
		t.Fatalf("after the second use: %d", r.Status)
	}

	// The audit log: verified by the binary, and broken by one byte.
	out := stdout(t, "break-glass", "verify-audit", audit)
	if !strings.Contains(out, "OK, ") {
		t.Fatalf("verify-audit: %s", out)
	}
	raw, _ := os.ReadFile(audit)
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	var events []string
	for _, m := range bgtest.ReadLogFile(audit) {
		events = append(events, fmt.Sprint(m["event"]))
	}
	if got := strings.Join(events, " "); got != "code_issued login request code_issued login credential_spent" {
		t.Fatalf("audit events: %s", got)
	}
	loginEv := hook.WaitEvent(t, "break_glass_login").JSON
	if sum := sha256.Sum256([]byte(lines[1])); loginEv["audit_head"] != hex.EncodeToString(sum[:]) {
		t.Fatalf("the login alert's audit_head %v is not the hash of the login line", loginEv["audit_head"])
	}
	i := strings.Index(string(raw), "INC-77")
	raw[i] = 'J' // on line 1 (code_issued)
	if err := os.WriteFile(audit, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(caddyBin, "break-glass", "verify-audit", audit)
	outb, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(outb), "line 1: its content does not match its hash") {
		t.Fatalf("verify-audit of an edited file: %v\n%s", err, outb)
	}
}
