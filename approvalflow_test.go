// Second-person control through the handler: the operator's waiting page,
// the approvers' links from outside the allow-list, and what each ending
// (approved, refused, timed out either way) does.

package breakglass

import (
	"bytes"
	"crypto/tls"
	"crypto/x509/pkix"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/caddyserver/caddy/v2"
)

// approvalTest is a handler whose account needs an approver, its webhook,
// the operator's browser (allowed) and an approver's (outside the
// allow-list).
type approvalTest struct {
	h        testHandler
	hook     *bgtest.Webhook
	op, away *bgtest.Client
	clk      *testClock
}

func newApprovalTest(t *testing.T, onTimeout string, mod func(*Handler)) approvalTest {
	clk := useTestClock(t)
	hook := bgtest.StartWebhook(t)
	h := newTestHandler(t, nil, func(h *Handler) {
		h.AlertWebhook = hook.URL
		h.Approval = &ApprovalConfig{Approvers: []string{"sec@example.com", "soc@example.com"}, OnTimeout: onTimeout,
			Wait: caddy.Duration(10 * time.Minute), URL: "https://example.com/admin/"}
		if mod != nil {
			mod(h)
		}
	})
	return approvalTest{h: h, hook: hook, op: h.client(t, "192.0.2.10"), away: h.client(t, "198.51.100.7"), clk: clk}
}

// waiting signs the operator in (password and code) and returns the page it
// then gets: the waiting page.
func (at approvalTest) waiting(t *testing.T) bgtest.Reply {
	t.Helper()
	if r := at.h.signInAt(t, at.op); r.Status != http.StatusSeeOther {
		t.Fatalf("the right code: status %d\n%s", r.Status, r.Body)
	}
	r := at.op.Get("/admin/")
	if r.Status != http.StatusAccepted || r.Header.Get("X-Upstream") != "" || !strings.Contains(r.Body, "Waiting for approval") {
		t.Fatalf("after the right code: status %d, upstream %q\n%s", r.Status, r.Header.Get("X-Upstream"), r.Body)
	}
	return r
}

// link is approver's link, as the handler logged it (dev_log_code), as a
// path and query on the test's site.
func (at approvalTest) link(t *testing.T, approver string) string {
	t.Helper()
	for _, e := range at.h.logs.Logs().All("break-glass approval link (dev_log_code)") {
		if e["approver"] == approver {
			u, err := url.Parse(fmt.Sprint(e["link"]))
			if err != nil {
				t.Fatal(err)
			}
			return u.RequestURI()
		}
	}
	t.Fatalf("no link logged for %s", approver)
	return ""
}

// decide opens approver's link from outside and posts the choice.
func (at approvalTest) decide(t *testing.T, approver, choice string) bgtest.Reply {
	t.Helper()
	link := at.link(t, approver)
	page := at.away.Get(link)
	if page.Status != http.StatusOK || !strings.Contains(page.Body, `value="approve"`) {
		t.Fatalf("the link of %s: status %d\n%s", approver, page.Status, page.Body)
	}
	return at.away.Do("POST", "/admin/?break_glass=approval", decisionPost(t, page, choice), nil)
}

// decisionPost is the form of a decision page, with choice.
func decisionPost(t *testing.T, page bgtest.Reply, choice string) url.Values {
	t.Helper()
	v := url.Values{"decision": {choice}}
	for _, name := range []string{"csrf_token", "id", "approver", "exp", "token"} {
		v.Set(name, page.Field(t, name))
	}
	return v
}

func TestApprovalAnApproverOutsideTheAllowListApprovesAndTheWaitingPageBecomesTheSession(t *testing.T) {
	at := newApprovalTest(t, onTimeoutDeny, nil)
	page := at.waiting(t)
	for _, want := range []string{"sec@example.com", "soc@example.com", "Unless someone approves it by"} {
		if !strings.Contains(page.Body, want) {
			t.Errorf("the waiting page lacks %q", want)
		}
	}
	if got := page.Header.Get("Refresh"); got != "5" {
		t.Errorf("the waiting page's Refresh header = %q, want 5 (it reloads itself, without script)", got)
	}
	if held := at.op.Get("/admin/?break_glass=hold"); held.Header.Get("Refresh") != "" || !strings.Contains(held.Body, "Check now") {
		t.Errorf("the held waiting page: Refresh %q\n%s", held.Header.Get("Refresh"), held.Body)
	}
	ask := at.hook.WaitEvent(t, eventApprovalAsk).JSON
	if ask["account"] != "ops@example.com" || !strings.Contains(fmt.Sprint(ask["approval"]), "sec@example.com") {
		t.Errorf("the approval_requested webhook: %v", ask)
	}
	// Outside the allow-list, the door is closed; only the link answers.
	if r := at.away.Get("/admin/"); r.Status != http.StatusForbidden {
		t.Fatalf("the login page from outside the allow-list: %d", r.Status)
	}
	// Opening the link decides nothing (mail scanners follow links).
	link := at.link(t, "sec@example.com")
	for range 2 {
		at.away.Get(link)
	}
	if r := at.op.Get("/admin/"); r.Status != http.StatusAccepted {
		t.Fatalf("a GET of the link decided: the operator got %d", r.Status)
	}
	r := at.decide(t, "sec@example.com", "approve")
	if r.Status != http.StatusOK || !strings.Contains(r.Body, "approved") {
		t.Fatalf("the approval: %d\n%s", r.Status, r.Body)
	}
	// A copy of the waiting browser's cookies (the same client): only one
	// of the two gets the session.
	twin := at.h.client(t, "192.0.2.10")
	base, _ := url.Parse("http://example.com/admin/")
	twin.Jar().SetCookies(base, at.op.Jar().Cookies(base))
	// The waiting page turns into the session.
	if r := at.op.Get("/admin/"); r.Status != http.StatusSeeOther {
		t.Fatalf("the waiting page after the approval: %d\n%s", r.Status, r.Body)
	}
	if r := twin.Get("/admin/"); r.Status != http.StatusUnauthorized || r.Header.Get("X-Upstream") != "" {
		t.Fatalf("a copy of the waiting browser after the session was issued: %d", r.Status)
	}
	if r := at.op.Get("/admin/"); r.Header.Get("X-Upstream") != "reached" || !strings.Contains(r.Body, "id=ops@example.com") {
		t.Fatalf("after the approval the upstream was not reached: %d\n%s", r.Status, r.Body)
	}
	login := at.hook.WaitEvent(t, eventLogin).JSON
	if ap, _ := login["approval"].(map[string]any); ap["decided_by"] != "sec@example.com" || !strings.Contains(fmt.Sprint(login["message"]), "Decided by sec@example.com") {
		t.Errorf("the login alert does not say who approved: %v", login)
	}
	approved := at.hook.WaitEvent(t, eventApproved).JSON
	if ap, _ := approved["approval"].(map[string]any); ap["decided_by"] != "sec@example.com (from 198.51.100.7)" || approved["ip"] != "192.0.2.10" {
		t.Errorf("the approved alert does not say who approved, from where, of which client: %v", approved)
	}
	if n := at.hook.Count(eventApproved); n != 1 {
		t.Errorf("%d approved alerts, want 1", n)
	}
	// The other approver's link now shows the outcome, and changes nothing.
	other := at.away.Get(at.link(t, "soc@example.com"))
	if other.Status != http.StatusOK || strings.Contains(other.Body, `value="approve"`) || !strings.Contains(other.Body, "approved by sec@example.com") {
		t.Fatalf("the other approver's link after the decision: %d\n%s", other.Status, other.Body)
	}
}

func TestApprovalARefusalEndsTheSignIn(t *testing.T) {
	at := newApprovalTest(t, onTimeoutGrant, nil)
	at.waiting(t)
	if r := at.decide(t, "soc@example.com", "refuse"); r.Status != http.StatusOK || !strings.Contains(r.Body, "refused") {
		t.Fatalf("the refusal: %d\n%s", r.Status, r.Body)
	}
	r := at.op.Get("/admin/")
	if r.Status != http.StatusForbidden || !strings.Contains(r.Body, "An approver refused this sign-in") {
		t.Fatalf("the waiting page after a refusal: %d\n%s", r.Status, r.Body)
	}
	// Not even at the deadline of a veto window: a refusal is final.
	at.clk.Advance(time.Hour)
	if r := at.op.Get("/admin/"); r.Header.Get("X-Upstream") != "" || r.Status != http.StatusUnauthorized {
		t.Fatalf("after a refusal and the deadline: %d, upstream %q", r.Status, r.Header.Get("X-Upstream"))
	}
	if at.hook.WaitEvent(t, eventRefused); at.hook.Count(eventLogin) != 0 {
		t.Fatal("a refused sign-in alerted a login")
	}
}

func TestApprovalAtTheDeadline(t *testing.T) {
	for _, c := range []struct {
		onTimeout string
		signedIn  bool
	}{{onTimeoutGrant, true}, {onTimeoutDeny, false}} {
		t.Run(c.onTimeout, func(t *testing.T) {
			at := newApprovalTest(t, c.onTimeout, nil)
			at.waiting(t)
			at.clk.Advance(10*time.Minute - time.Second)
			if r := at.op.Get("/admin/"); r.Status != http.StatusAccepted {
				t.Fatalf("a second before the deadline: %d", r.Status)
			}
			early := at.away.Get(at.link(t, "soc@example.com")) // its form, before the deadline
			at.clk.Advance(time.Second)
			// The form posted at the deadline decides nothing: the token
			// has expired with its request.
			refuse := "refuse"
			if c.onTimeout == onTimeoutDeny {
				refuse = "approve"
			}
			if r := at.away.Do("POST", "/admin/?break_glass=approval", decisionPost(t, early, refuse), nil); r.Status != http.StatusConflict {
				t.Fatalf("a decision posted at the deadline: %d\n%s", r.Status, r.Body)
			}
			r := at.op.Get("/admin/")
			if c.signedIn {
				if r.Status != http.StatusSeeOther || at.op.Get("/admin/").Header.Get("X-Upstream") != "reached" {
					t.Fatalf("a veto window at its deadline: %d\n%s", r.Status, r.Body)
				}
				at.hook.WaitEvent(t, eventLogin)
			} else if r.Status != http.StatusForbidden || !strings.Contains(r.Body, "Nobody approved this sign-in before its deadline") {
				t.Fatalf("an unapproved request at its deadline: %d\n%s", r.Status, r.Body)
			}
			at.hook.WaitEvent(t, eventApprovalEnd)
			// A link after the deadline shows the outcome, and decides nothing.
			late := at.away.Get(at.link(t, "sec@example.com"))
			if strings.Contains(late.Body, `value="approve"`) || !strings.Contains(late.Body, "before its deadline") {
				t.Fatalf("a link after the deadline: %d\n%s", late.Status, late.Body)
			}
			if n := at.hook.Count(eventApprovalEnd); n != 1 {
				t.Fatalf("%d timeout alerts, want 1", n)
			}
		})
	}
}

func TestApprovalLinksDoNothingWithoutTheirToken(t *testing.T) {
	at := newApprovalTest(t, onTimeoutDeny, nil)
	at.waiting(t)
	link := at.link(t, "sec@example.com")
	u, _ := url.Parse(link)
	forge := func(key, value string) string {
		q := u.Query()
		q.Set(key, value)
		return u.Path + "?" + q.Encode()
	}
	for name, path := range map[string]string{
		"no token":               "/admin/?break_glass=approval",
		"another token":          forge("token", strings.Repeat("A", 43)),
		"another approver":       forge("approver", "soc@example.com"),
		"not an approver":        forge("approver", "eve@example.com"),
		"another deadline":       forge("exp", "1"),
		"another request":        forge("id", strings.Repeat("0", 32)),
		"a path as the request":  forge("id", "../../break_glass/key"),
		"the account's own link": forge("approver", "ops@example.com"),
	} {
		if r := at.away.Get(path); r.Status != http.StatusForbidden || strings.Contains(r.Body, "ops@example.com") {
			t.Errorf("%s: status %d, or the request shown\n%s", name, r.Status, r.Body)
		}
	}
	page := at.away.Get(link)
	form := decisionPost(t, page, "approve")
	form.Set("csrf_token", "x")
	if r := at.away.Do("POST", "/admin/?break_glass=approval", form, nil); r.Status != http.StatusForbidden {
		t.Errorf("a decision without the page's CSRF token: %d", r.Status)
	}
	form = decisionPost(t, page, "approve")
	form.Set("approver", "soc@example.com")
	if r := at.away.Do("POST", "/admin/?break_glass=approval", form, nil); r.Status != http.StatusForbidden {
		t.Errorf("a decision with one approver's token for another: %d", r.Status)
	}
	if r := at.op.Get("/admin/"); r.Status != http.StatusAccepted {
		t.Fatalf("forged links decided the request: the operator got %d", r.Status)
	}
	// The token is single-use: after the decision, a second post changes
	// nothing.
	if r := at.away.Do("POST", "/admin/?break_glass=approval", decisionPost(t, page, "refuse"), nil); r.Status != http.StatusOK {
		t.Fatalf("the refusal: %d\n%s", r.Status, r.Body)
	}
	if r := at.away.Do("POST", "/admin/?break_glass=approval", decisionPost(t, page, "approve"), nil); r.Status != http.StatusConflict {
		t.Fatalf("the same token again: %d\n%s", r.Status, r.Body)
	}
	if r := at.op.Get("/admin/"); r.Status != http.StatusForbidden {
		t.Fatalf("a reused token overturned the refusal: the operator got %d", r.Status)
	}
}

func TestApprovalNeverAsksTheAccountItself(t *testing.T) {
	at := newApprovalTest(t, onTimeoutDeny, func(h *Handler) {
		h.Approval.Approvers = []string{"OPS@example.com", "sec@example.com"}
	})
	page := at.waiting(t)
	if strings.Contains(page.Body, "OPS@example.com") || len(at.h.logs.Logs().All("break-glass approval link (dev_log_code)")) != 1 {
		t.Fatalf("the account's own holder was asked:\n%s", page.Body)
	}
}

func TestApprovalWithRequireAlertNeedsTheRequestDelivered(t *testing.T) {
	old := requireAlertWait
	requireAlertWait = 300 * time.Millisecond
	t.Cleanup(func() { requireAlertWait = old })
	at := newApprovalTest(t, onTimeoutGrant, func(h *Handler) { h.RequireAlert = true })
	at.hook.SetStatus(http.StatusInternalServerError)
	if r := at.h.signInAt(t, at.op); r.Status != http.StatusServiceUnavailable || !strings.Contains(r.Body, "nobody could be told") {
		t.Fatalf("with every channel down: %d\n%s", r.Status, r.Body)
	}
	// The request was refused by the door: its links decide nothing, and
	// the deadline grants nothing.
	at.clk.Advance(time.Hour)
	if r := at.op.Get("/admin/"); r.Header.Get("X-Upstream") != "" || r.Status != http.StatusUnauthorized {
		t.Fatalf("an unalerted request's browser after the deadline: %d", r.Status)
	}
	at.hook.SetStatus(http.StatusNoContent)
	at.clk.Advance(time.Hour)
	at.waiting(t)
	at.clk.Advance(10 * time.Minute)
	if r := at.op.Get("/admin/"); r.Status != http.StatusSeeOther {
		t.Fatalf("a confirmed request in its veto window at the deadline: %d", r.Status)
	}
}

func TestApprovalConfigIsCheckedAtLoad(t *testing.T) {
	good := func() *ApprovalConfig {
		return &ApprovalConfig{Approvers: []string{"sec@example.com"}, OnTimeout: "deny", URL: "https://example.com/admin/"}
	}
	for name, c := range map[string]struct {
		mod  func(h *Handler)
		want string
	}{
		"no approvers":       {func(h *Handler) { h.Approval.Approvers = nil }, "approval: approvers: at least one"},
		"a bad approver":     {func(h *Handler) { h.Approval.Approvers = []string{"sec"} }, `approval: approvers: "sec": not a plain email`},
		"no on_timeout":      {func(h *Handler) { h.Approval.OnTimeout = "" }, "approval: on_timeout: required"},
		"a bad on_timeout":   {func(h *Handler) { h.Approval.OnTimeout = "allow" }, `approval: on_timeout: "allow"`},
		"no url":             {func(h *Handler) { h.Approval.URL = "" }, "approval: url: \"\": required"},
		"a relative url":     {func(h *Handler) { h.Approval.URL = "/admin/" }, "approval: url"},
		"a url with a query": {func(h *Handler) { h.Approval.URL = "https://example.com/?a=b" }, "approval: url"},
		"too long a wait":    {func(h *Handler) { h.Approval.Wait = caddy.Duration(25 * time.Hour) }, "approval: wait"},
		"only the account":   {func(h *Handler) { h.Approval.Approvers = []string{"ops@example.com"} }, "account ops@example.com: approval: no approver but the account itself"},
		"no mail": {func(h *Handler) {
			h.DevLogCode = false
			h.Accounts = []AccountConfig{{Email: "ops@example.com", Hash: h.Hash, SecondFactor: []string{"totp"}, TOTPSecret: "JBSWY3DPEHPK3PXP"}}
			h.Email, h.Hash = "", ""
		},
			"approval: needs smtp"},
		"an account's own block": {func(h *Handler) {
			h.Accounts = []AccountConfig{{Email: "ops@example.com", Hash: h.Hash, Approval: &ApprovalConfig{OnTimeout: "deny"}}}
			h.Email, h.Hash = "", ""
		}, "account ops@example.com: approval: approvers"},
	} {
		t.Run(name, func(t *testing.T) {
			app := &App{}
			if err := app.setup(zapNop(), nil); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = app.Cleanup() })
			h := &Handler{Email: "ops@example.com", Hash: testHash(t, 4), DevLogCode: true, Approval: good()}
			c.mod(h)
			err := h.setup(app, zapNop())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one with %q", err, c.want)
			}
		})
	}
}

var linkRE = regexp.MustCompile(`https?://[^\s"]*break_glass=approval[^\s"]*`)

// On a running Caddy configured by Caddyfile: the approver's mail arrives
// over SMTP, its link works from an address outside the allow-list, and
// the waiting browser gets its session; a second sign-in is refused from
// the host (caddy break-glass refuse), and every step is in the audit log.
func TestApprovalOnARunningCaddy(t *testing.T) {
	w := newWorld(t)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	// The access log, filtered as the README says, so that no approver's
	// token is written to it.
	access := filepath.Join(t.TempDir(), "access.log")
	cfg := strings.Replace(w.caddyfile(5, fmt.Sprintf(`log {
		output file %s
		format filter {
			request>uri query {
				delete token
			}
		}
	}`, access)), "admin off", "admin "+admin, 1)
	cfg = strings.Replace(cfg, "alert_webhook "+w.hook.URL+"/hook", fmt.Sprintf(`alert_webhook %s/hook
		audit_log %s
		approval {
			approvers sec@example.com ops@example.com
			wait 10m
			on_timeout deny
			url %s/admin/
		}`, w.hook.URL, audit, w.base), 1)
	w.load(cfg, "caddyfile")

	op := w.kit("127.0.0.2")
	w.signIn(op)
	if r := op.Get("/admin/"); r.Status != http.StatusAccepted || r.Header.Get("Refresh") == "" {
		t.Fatalf("the waiting page: %d\n%s", r.Status, r.Body)
	}
	mail := w.smtp.waitMail(t, 0, "sec@example.com", "Approve or refuse")
	link := linkRE.FindString(mail.Text)
	if link == "" || !strings.Contains(mail.HTML, "Review the request") || !strings.Contains(mail.Text, "127.0.0.2") {
		t.Fatalf("the approver's mail: %+v", mail)
	}
	for _, m := range w.smtp.Mails() {
		if strings.Contains(m.Subject, "Approve or refuse") && m.To[0] != "sec@example.com" {
			t.Fatalf("an approval mail to %v: the account itself is never asked", m.To)
		}
	}
	away := w.kit("127.0.0.9")
	if r := away.Get("/admin/"); r.Status != http.StatusForbidden {
		t.Fatalf("the door from outside the allow-list: %d", r.Status)
	}
	u := mustURL(link)
	page := away.Get(u.RequestURI())
	if r := away.Do("POST", "/admin/?break_glass=approval", decisionPost(t, page, "approve"), nil); r.Status != http.StatusOK {
		t.Fatalf("the approval from 127.0.0.9: %d\n%s", r.Status, r.Body)
	}
	if r := op.Get("/admin/"); r.Status != http.StatusSeeOther {
		t.Fatalf("the waiting page after the approval: %d", r.Status)
	}
	token := u.Query().Get("token")
	logged := false
	for _, l := range bgtest.ReadLogFile(access) {
		uri := fmt.Sprint(l["request"].(map[string]any)["uri"])
		logged = logged || strings.Contains(uri, "break_glass=approval")
		if strings.Contains(uri, token) {
			t.Fatalf("the access log holds an approver's token: %s", uri)
		}
	}
	if !logged {
		t.Fatalf("the access log has no line of the approver's link: %v", bgtest.ReadLogFile(access))
	}
	if r := op.Get("/admin/reports"); r.Status != http.StatusOK || r.Body != "upstream /admin/reports" {
		t.Fatalf("the session after the approval: %d %q", r.Status, r.Body)
	}
	w.up.mu.Lock()
	user := w.up.last.Get("X-Break-Glass-User")
	w.up.mu.Unlock()
	if user != "ops@example.com" {
		t.Fatalf("the upstream got the user %q", user)
	}

	// A second sign-in, refused from the host.
	op2 := w.kit("127.0.0.3")
	w.signInWith(op2, testPassword, "")
	if r := op2.Get("/admin/"); r.Status != http.StatusAccepted {
		t.Fatalf("the second waiting page: %d", r.Status)
	}
	txt, err := runCommand(t, statusCommand(), "--address", admin)
	id := regexp.MustCompile(`(?m)^([0-9a-f]{32})\s+ops@example.com\s+127.0.0.3`).FindStringSubmatch(txt)
	if err != nil || id == nil {
		t.Fatalf("status does not list the waiting request: %v\n%s", err, txt)
	}
	if txt, err := runCommand(t, decisionCommand(false), "--address", admin, id[1]); err != nil || !strings.Contains(txt, "refused") {
		t.Fatalf("refuse: %v\n%s", err, txt)
	}
	if _, err := runCommand(t, decisionCommand(true), "--address", admin, id[1]); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("approving a refused request: %v, want a 409", err)
	}
	if r := op2.Get("/admin/"); r.Status != http.StatusForbidden || !strings.Contains(r.Body, "refused on the server") {
		t.Fatalf("the refused operator: %d\n%s", r.Status, r.Body)
	}
	w.hook.WaitEvent(t, eventRefused)

	rep, b, err := verifyAuditFile(audit)
	if err != nil {
		t.Fatalf("verify-audit: %v (%+v)", err, rep)
	}
	got := auditEvents(b)
	for _, want := range []string{"approval_requested approved login", "approval_requested approval_refused"} {
		if !strings.Contains(got, want) {
			t.Fatalf("the audit log's events %q lack %q", got, want)
		}
	}
	for _, m := range bgtest.ReadLogs(bytes.NewReader(b)) {
		if m["event"] == auditApproved && (m["by"] != "sec@example.com (from 127.0.0.9)" || m["approval"] == nil || m["email"] != "ops@example.com") {
			t.Fatalf("the approved line does not say who decided what: %v", m)
		}
		if m["event"] == auditApprovalRefused && !strings.HasPrefix(fmt.Sprint(m["by"]), "admin (admin API") {
			t.Fatalf("the refused line does not say the host decided: %v", m)
		}
	}
}

// A client certificate signs in at the password step, without a code: with
// approval, each such request is counted as a code for the client, so that
// someone with the password and the certificate cannot flood the approvers.
func TestApprovalRequestsWithAClientCertificateAreBoundedAsCodes(t *testing.T) {
	ca := bgtest.NewCA(t, "break-glass test CA")
	alice, fp := ca.Client(t, pkix.Name{CommonName: "alice"})
	h := newTestHandler(t, &App{MaxAttempts: 5, CodesPerClient: 2}, func(h *Handler) {
		h.Email, h.Hash = "", ""
		h.Accounts = []AccountConfig{{Email: "ops@example.com", Hash: testHash(t, 4), SecondFactor: []string{"client_cert"}, ClientCerts: []string{fp},
			Approval: &ApprovalConfig{Approvers: []string{"sec@example.com"}, OnTimeout: onTimeoutDeny, URL: "https://example.com/admin/"}}}
		h.AllowedIPs = nil // loopback
	})
	site := certSite(t, h, ca, tls.VerifyClientCertIfGiven)
	for i := range 3 {
		r := site(&alice).Login("/admin/", "ops@example.com", testPassword, "", nil)
		want := http.StatusSeeOther
		if i == 2 {
			want = http.StatusTooManyRequests
		}
		if r.Status != want {
			t.Fatalf("request %d: %d, want %d\n%s", i+1, r.Status, want, r.Body)
		}
	}
	if n := len(h.logs.Logs().All("break-glass approval link (dev_log_code)")); n != 2 {
		t.Fatalf("%d approval requests made, want 2", n)
	}
}

// A session is bound to the credential, whichever handler issued it: one
// credential in two handlers of one config with different approval (or
// none in one) would let a session of one open the other without an
// approver. Such a config is refused at load.
func TestOneCredentialInTwoHandlersHasOneApproval(t *testing.T) {
	policy := func(onTimeout string) *ApprovalConfig {
		return &ApprovalConfig{Approvers: []string{"sec@example.com"}, OnTimeout: onTimeout, URL: "https://example.com/admin/"}
	}
	for name, c := range map[string]struct {
		first, second *ApprovalConfig
		refused       bool
	}{
		"approval in one only":   {policy(onTimeoutDeny), nil, true},
		"approval in the other":  {nil, policy(onTimeoutDeny), true},
		"a veto window and deny": {policy(onTimeoutGrant), policy(onTimeoutDeny), true},
		"the same approval":      {policy(onTimeoutDeny), policy(onTimeoutDeny), false},
		"no approval in either":  {nil, nil, false},
	} {
		t.Run(name, func(t *testing.T) {
			app := &App{}
			if err := app.setup(zapNop(), nil); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = app.Cleanup() })
			hash := testHash(t, 4)
			first := &Handler{Email: "ops@example.com", Hash: hash, DevLogCode: true, Approval: c.first}
			if err := first.setup(app, zapNop()); err != nil {
				t.Fatal(err)
			}
			second := &Handler{Email: "ops@example.com", Hash: hash, DevLogCode: true, Approval: c.second}
			err := second.setup(app, zapNop())
			if c.refused != (err != nil) || (err != nil && !strings.Contains(err.Error(), "account ops@example.com: approval: another break_glass handler has this account with another approval")) {
				t.Fatalf("error %v, refused: want %v", err, c.refused)
			}
		})
	}
	// The same email with another hash is another credential: no conflict.
	app := &App{}
	if err := app.setup(zapNop(), nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Cleanup() })
	if err := (&Handler{Email: "ops@example.com", Hash: testHash(t, 4), DevLogCode: true, Approval: policy(onTimeoutDeny)}).setup(app, zapNop()); err != nil {
		t.Fatal(err)
	}
	if err := (&Handler{Email: "ops@example.com", Hash: testHash(t, 5), DevLogCode: true}).setup(app, zapNop()); err != nil {
		t.Fatalf("another hash of the same email: %v", err)
	}
}

// The site an approver reads of is the door's (site_name, else the host of
// the approval url), never the Host header of the person signing in, who
// could name another site to steer the decision.
func TestApprovalNamesTheConfiguredSiteNotTheRequestsHost(t *testing.T) {
	at := newApprovalTest(t, onTimeoutDeny, nil)
	at.op.Base = "http://drill.example.net"
	at.waiting(t)
	page := at.away.Get(at.link(t, "sec@example.com"))
	if strings.Contains(page.Body, "drill.example.net") || !strings.Contains(page.Body, "<dt>Site</dt><dd>example.com</dd>") {
		t.Fatalf("the decision page names the request's host:\n%s", page.Body)
	}
	if ask := at.hook.WaitEvent(t, eventApprovalAsk).JSON; ask["host"] != "example.com" {
		t.Fatalf("the approval_requested alert names host %v", ask["host"])
	}
}

// A timeout is recorded even when nobody watches: not the operator's page
// (closed), nor a link. The app's watch finds it, once; a late link then
// records nothing more.
func TestApprovalATimeoutNobodyWatchedIsRecordedOnce(t *testing.T) {
	at := newApprovalTest(t, onTimeoutDeny, nil)
	at.waiting(t)
	at.clk.Advance(10 * time.Minute)
	at.h.app.noteTimeouts()
	at.hook.WaitEvent(t, eventApprovalEnd)
	at.h.app.noteTimeouts()
	at.away.Get(at.link(t, "sec@example.com"))
	if n := len(at.h.logs.Logs().All("break-glass approval request undecided at its deadline")); n != 1 {
		t.Fatalf("%d timeout lines, want 1", n)
	}
}

// A late link records the timeout itself, when the watch has not yet.
func TestApprovalALateLinkRecordsTheTimeout(t *testing.T) {
	at := newApprovalTest(t, onTimeoutGrant, nil)
	at.waiting(t)
	at.clk.Advance(10 * time.Minute)
	if late := at.away.Get(at.link(t, "sec@example.com")); !strings.Contains(late.Body, "Nobody refused this sign-in before its deadline") {
		t.Fatalf("a late link: %d\n%s", late.Status, late.Body)
	}
	if ev := at.hook.WaitEvent(t, eventApprovalEnd).JSON; ev["account"] != "ops@example.com" {
		t.Fatalf("the timeout alert: %v", ev)
	}
}

// One credential in two handlers (with one approval): the decision is
// recorded on the handler whose link the approver opened — its alert
// channels and audit log — not on whichever was configured first.
func TestApprovalDecisionIsRecordedWhereItsLinkLed(t *testing.T) {
	useTestClock(t)
	app := &App{MaxAttempts: 3}
	first, second := bgtest.StartWebhook(t), bgtest.StartWebhook(t)
	policy := func(hook string) func(*Handler) {
		return func(h *Handler) {
			h.AlertWebhook = hook
			h.Approval = &ApprovalConfig{Approvers: []string{"sec@example.com"}, OnTimeout: onTimeoutDeny, URL: "https://example.com/admin/"}
		}
	}
	newTestHandler(t, app, policy(first.URL))
	h := newTestHandler(t, app, policy(second.URL))
	at := approvalTest{h: h, hook: second, op: h.client(t, "192.0.2.10"), away: h.client(t, "198.51.100.7")}
	at.waiting(t)
	at.decide(t, "sec@example.com", "approve")
	second.WaitEvent(t, eventApproved)
	if n := first.Count(eventApproved); n != 0 {
		t.Fatalf("the other handler's webhook got %d approved alerts", n)
	}
}
