//go:build e2e

// Scenario: second-person control in real browsers. The operators sign in
// from ::1 (the only allowed address); the approval mails arrive in mailpit;
// an approver's browser opens its link from 127.0.0.1, outside the
// allow-list, and approves or refuses; the operators' waiting pages turn
// into the session, or the refusal, by themselves. Two more accounts wait
// out a short deadline: one a veto window (on_timeout grant), one an
// approval required (deny).

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/chromedp/chromedp"
)

var approvalLinkRE = regexp.MustCompile(`https?://[^\s"]*break_glass=approval[^\s"]*`)

func TestBrowserApprovalApprovedRefusedAndTimedOut(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	hook := bgtest.StartWebhook(t)
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	approval := func(approvers, wait, onTimeout string) string {
		return fmt.Sprintf(`approval {
					approvers %s
					wait %s
					on_timeout %s
					url http://127.0.0.1:{PORT}/admin/
				}`, approvers, wait, onTimeout)
	}
	c := startCaddy(t, fmt.Sprintf(`{
	admin {ADMIN}
	break_glass {
		codes_per_client 10
		smtp %s {
			tls none
			from "Break Glass <breakglass@example.com>"
		}
	}
}

:{PORT} {
	bind 127.0.0.1 ::1
	route /admin* {
		break_glass {
			account alice@example.com {
				hash {env.BG_HASH}
				%s
			}
			account bob@example.com {
				hash {env.BG_HASH}
				%s
			}
			account carol@example.com {
				hash {env.BG_HASH}
				%s
			}
			allowed_ips ::1
			alert_emails team@example.com
			alert_webhook %s/hook
			audit_log %s
		}
		respond "Admin area. Signed in as {http.auth.user.id}." 200
	}
}
`, mp.smtp, approval("sec@example.com soc@example.com", "10m", "deny"), approval("sec@example.com", "8s", "grant"),
		approval("sec@example.com", "8s", "deny"), hook.URL, audit), "caddyfile")
	door := fmt.Sprintf("http://[::1]:%d/admin/", c.port)
	seen := map[string]bool{}

	// waiting signs who in from a browser of their own, up to the page
	// that waits for approval. (Every operator is ::1, hence the
	// codes_per_client above its default of 3.)
	waiting := func(who string) context.Context {
		t.Helper()
		ctx := browser(t)
		browserStep(t, ctx, who+": password", chromedp.Navigate(door), chromedp.WaitVisible(chromedp.CSS("#email")),
			chromedp.SendKeys(chromedp.CSS("#email"), who),
			chromedp.SendKeys(chromedp.CSS("#password"), testPassword+"\n"),
			chromedp.WaitVisible(chromedp.CSS("#code")))
		code := codeRE.FindStringSubmatch(mp.waitMail(t, who, "one-time code", seen).Text)
		if code == nil {
			t.Fatalf("%s: no code in the mail", who)
		}
		browserStep(t, ctx, who+": code", chromedp.SendKeys(chromedp.CSS("#code"), code[1]+"\n"), waitText("Waiting for approval"))
		return ctx
	}
	// link is the link of the next approval mail to approver about who.
	link := func(approver, who string) string {
		t.Helper()
		mail := mp.waitMail(t, approver, "Approve or refuse: "+who, seen)
		l := approvalLinkRE.FindString(mail.Text)
		if l == "" || !strings.Contains(mail.Text, "::1") {
			t.Fatalf("the approval mail to %s: %q", approver, mail.Text)
		}
		return l
	}
	approver := browser(t)

	// Alice (approval required): approved by sec@ from outside the allow-list.
	alice := waiting("alice@example.com")
	if txt := bodyText(t, alice); !strings.Contains(txt, "sec@example.com, soc@example.com") || !strings.Contains(txt, "Unless someone approves it by") {
		t.Fatalf("alice's waiting page: %s", txt)
	}
	// The page held still (it reloads itself otherwise) for the checks.
	browserStep(t, alice, "hold the waiting page", chromedp.Click(chromedp.CSS(`a[href$="break_glass=hold"]`)), waitText("Check now"))
	checkPage(t, alice, "approval-waiting")
	browserStep(t, alice, "check again", chromedp.Click(chromedp.CSS(`main a[href="/admin/"]`)), waitText("This page checks every 5 seconds"))

	aliceLink := link("sec@example.com", "alice@example.com")
	browserStep(t, approver, "the door from outside the allow-list", chromedp.Navigate(fmt.Sprintf("http://127.0.0.1:%d/admin/", c.port)),
		waitText("not available from your network address"))
	browserStep(t, approver, "open the link", chromedp.Navigate(aliceLink), waitText("Approve a break-glass sign-in?"))
	if txt := bodyText(t, approver); !strings.Contains(txt, "alice@example.com") || !strings.Contains(txt, "::1") {
		t.Fatalf("the decision page does not say who signs in from where: %s", txt)
	}
	checkPage(t, approver, "approval-decide")
	browserStep(t, approver, "approve", chromedp.Click(chromedp.CSS(`button[value="approve"]`)), waitText("Done. The sign-in is approved"))
	checkPage(t, approver, "approval-decided")
	// Alice's page turns into her session by itself.
	browserStep(t, alice, "the waiting page becomes the session", waitText("Admin area. Signed in as alice@example.com."))
	approved := hook.WaitEvent(t, "break_glass_approved").JSON
	if ap, _ := approved["approval"].(map[string]any); ap == nil || !strings.Contains(fmt.Sprint(ap["decided_by"]), "sec@example.com (from 127.0.0.1)") {
		t.Fatalf("the approved webhook does not say who decided: %v", approved)
	}
	mp.waitMail(t, "team@example.com", "Sign-in approved", seen)

	// Alice again: refused by soc@.
	alice2 := waiting("alice@example.com")
	browserStep(t, approver, "open soc's link", chromedp.Navigate(link("soc@example.com", "alice@example.com")), waitText("Approve a break-glass sign-in?"))
	browserStep(t, approver, "refuse", chromedp.Click(chromedp.CSS(`button[value="refuse"]`)), waitText("Done. The sign-in is refused"))
	browserStep(t, alice2, "the waiting page becomes the refusal", waitText("An approver refused this sign-in"))
	checkPage(t, alice2, "approval-refused")
	// sec@'s link of that request now shows how it ended.
	browserStep(t, approver, "sec's link after the refusal", chromedp.Navigate(link("sec@example.com", "alice@example.com")),
		waitText("This sign-in was refused by soc@example.com"))

	// Bob (a veto window) and Carol (approval required) wait out 8 s.
	bob, carol := waiting("bob@example.com"), waiting("carol@example.com")
	browserStep(t, bob, "bob's deadline passes unrefused", waitText("Admin area. Signed in as bob@example.com."))
	browserStep(t, carol, "carol's deadline passes unapproved", waitText("Nobody approved this sign-in before its deadline"))
	checkPage(t, carol, "approval-timed-out")
	for _, who := range []string{"bob@example.com", "carol@example.com"} {
		within(t, 10*time.Second, "the timeout alert of "+who, func() bool {
			for _, e := range hook.Events() {
				if e["event"] == "break_glass_approval_timeout" && e["account"] == who {
					return true
				}
			}
			return false
		})
	}

	// The audit log verifies, and holds each decision with who made it.
	if out := stdout(t, "break-glass", "verify-audit", audit); !strings.Contains(out, "OK") {
		t.Fatalf("verify-audit: %s", out)
	}
	events := ""
	for _, l := range bgtest.ReadLogFile(audit) {
		events += fmt.Sprint(l["event"], " by ", l["by"], "; ")
	}
	for _, want := range []string{"approved by sec@example.com (from 127.0.0.1)", "approval_refused by soc@example.com (from 127.0.0.1)", "approval_timeout"} {
		if !strings.Contains(events, want) {
			t.Errorf("the audit log lacks %q: %s", want, events)
		}
	}
}

// In cluster mode, the request made on one instance is decided on the
// other: the operator waits on A, the approver's link opens on B (from an
// address outside the allow-list), and A's waiting page becomes the session.
func TestClusterApprovalDecidedOnTheOtherInstance(t *testing.T) {
	mp := startMailpit(t, mailpitOptions{})
	storage := filepath.Join(t.TempDir(), "storage")
	cfg := fmt.Sprintf(`{
	admin {ADMIN}
	storage file_system %s
	break_glass {
		state storage
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
		allowed_ips 127.0.0.2
		approval {
			approvers sec@example.com
			on_timeout deny
			url http://127.0.0.1:{PORT}/admin/
		}
	}
	respond /admin* "Admin area. Signed in as {http.auth.user.id}." 200
}
`, storage, mp.smtp)
	a, b := startCaddy(t, cfg, "caddyfile"), startCaddy(t, cfg, "caddyfile")
	seen := map[string]bool{}
	op := newClient(t, a.base, "127.0.0.2")
	signIn(t, op, mp, seen)
	if r := op.Get("/admin/"); r.Status != http.StatusAccepted {
		t.Fatalf("the waiting page on A: %d", r.Status)
	}
	link, err := url.Parse(approvalLinkRE.FindString(mp.waitMail(t, "sec@example.com", "Approve or refuse", seen).Text))
	if err != nil || link.Port() != fmt.Sprint(a.port) {
		t.Fatalf("the link %v (%v) is not A's", link, err)
	}
	// The approver opens it on B, from outside the allow-list.
	approver := newClient(t, b.base, "127.0.0.9")
	page := approver.Get(link.RequestURI())
	if page.Status != http.StatusOK || !strings.Contains(page.Body, `value="approve"`) {
		t.Fatalf("the link on B: %d\n%s", page.Status, page.Body)
	}
	form := url.Values{"decision": {"approve"}}
	for _, name := range []string{"csrf_token", "id", "approver", "exp", "token"} {
		form.Set(name, page.Field(t, name))
	}
	if r := approver.Do("POST", "/admin/?break_glass=approval", form, nil); r.Status != http.StatusOK {
		t.Fatalf("the approval on B: %d\n%s", r.Status, r.Body)
	}
	if r := op.Get("/admin/"); r.Status != http.StatusSeeOther {
		t.Fatalf("A's waiting page after B's approval: %d", r.Status)
	}
	if r := op.Get("/admin/"); r.Status != http.StatusOK || !strings.Contains(r.Body, "Signed in as ops@example.com") {
		t.Fatalf("the session on A: %d", r.Status)
	}
	b.waitLog(t, "break-glass sign-in approved", map[string]string{"decided_by": "sec@example.com (from 127.0.0.9)"})
}
