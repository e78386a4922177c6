//go:build e2e

// Scenario: two custodians, each with an account of their own (one bcrypt,
// one argon2id), sign in from two browsers; every alert names who came in.

package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/chromedp/chromedp"
)

const bobPassword = "bob's own long passphrase"

func TestTwoCustodiansSignInFromTwoBrowsers(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	hook := bgtest.StartWebhook(t)
	out, err := exec.Command(caddyBin, "hash-password", "--algorithm", "argon2id", "--plaintext", bobPassword).Output()
	if err != nil {
		t.Fatalf("caddy hash-password --algorithm argon2id: %v", err)
	}
	c := startCaddy(t, fmt.Sprintf(`{
	admin {ADMIN}
	break_glass {
		smtp %s {
			tls none
			from "Break Glass <breakglass@example.com>"
		}
	}
}

:{PORT} {
	bind 127.0.0.1
	route /admin* {
		break_glass {
			account alice@example.com {
				hash {env.BG_HASH}
			}
			account bob@example.com {
				hash {env.BG_BOB_HASH}
				sentinel_id -1
			}
			allowed_ips 127.0.0.1
			alert_emails sec@example.com
			alert_webhook %s/hook
		}
		respond "Admin area. Signed in as {http.auth.user.id}, acting as user {http.auth.user.sentinel_id}." 200
	}
}
`, mp.smtp, hook.URL), "caddyfile", "BG_BOB_HASH="+strings.TrimSpace(string(out)))

	seen := map[string]bool{}
	for _, who := range []struct{ email, password, sentinel string }{
		{"alice@example.com", testPassword, "0"},
		{"bob@example.com", bobPassword, "-1"},
	} {
		ctx := browser(t) // a browser of their own
		step := func(what string, actions ...chromedp.Action[chromedp.Void]) {
			t.Helper()
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := chromedp.Do(sctx, actions...); err != nil {
				t.Fatalf("%s, %s: %v\npage: %s", who.email, what, err, bodyText(t, ctx))
			}
		}
		step("open the guarded URL", chromedp.Navigate(c.base+"/admin/"), chromedp.WaitVisible(chromedp.CSS("#email")))
		step("type email and password",
			chromedp.SendKeys(chromedp.CSS("#email"), who.email),
			chromedp.SendKeys(chromedp.CSS("#password"), who.password+"\n"),
			chromedp.WaitVisible(chromedp.CSS("#code")))
		// The code goes to the account's own mailbox.
		mail := mp.waitMail(t, who.email, "one-time code", seen)
		code := codeRE.FindStringSubmatch(mail.Text)
		if code == nil {
			t.Fatalf("no code in %s's mail: %q", who.email, mail.Text)
		}
		step("type the code", chromedp.SendKeys(chromedp.CSS("#code"), code[1]+"\n"), waitText("Admin area"))
		want := fmt.Sprintf("Signed in as %s, acting as user %s.", who.email, who.sentinel)
		if txt := bodyText(t, ctx); !strings.Contains(txt, want) {
			t.Errorf("%s: upstream page %q, want %q", who.email, txt, want)
		}
		// Every alert names the account.
		alert := mp.waitMail(t, "sec@example.com", "Emergency login used", seen)
		if !strings.Contains(alert.Text, "Account:    "+who.email) {
			t.Errorf("the alert mail of %s's login does not name the account:\n%s", who.email, alert.Text)
		}
		c.waitLog(t, "break-glass login succeeded", map[string]string{"email": who.email})
	}
	var accounts []string
	for _, r := range hook.Wait(t, 2) {
		if r.JSON["event"] == "break_glass_login" {
			accounts = append(accounts, fmt.Sprint(r.JSON["account"]))
		}
	}
	if strings.Join(accounts, " ") != "alice@example.com bob@example.com" {
		t.Errorf("the webhook's login events name %q", accounts)
	}
	// The status lists both accounts, each with its live session.
	st := stdout(t, "break-glass", "status", "--address", c.admin)
	for _, email := range []string{"alice@example.com", "bob@example.com"} {
		if !strings.Contains(st, email) {
			t.Errorf("status does not list %s:\n%s", email, st)
		}
	}
}
