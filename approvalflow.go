// Second-person control of a sign-in: the approval config, the request a
// right second factor makes instead of a session, the operator's waiting
// page, and the timeouts nobody saw (the approvers' side is in
// approvaldecision.go).

package breakglass

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	netmail "net/mail"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// ApprovalConfig makes a sign-in wait for a second person once its password
// and second factor were right: each approver is mailed a link to a page
// where they approve or refuse it; the operator's page turns into the
// session once it is granted.
type ApprovalConfig struct {
	// Who may approve or refuse: email addresses, each sent a link of their
	// own. An approver is never asked about a request of their own
	// account; every account must have another. Required; at most 20.
	Approvers []string `json:"approvers,omitempty"`

	// How long a request stays open, from 1s to 24h. Default: 15m.
	Wait caddy.Duration `json:"wait,omitempty"`

	// What an undecided request becomes at its deadline: "deny" (approval
	// required: no session unless an approver approves) or "grant" (a veto
	// window: a session unless an approver refuses). Required: the two
	// mean very different things.
	OnTimeout string `json:"on_timeout,omitempty"`

	// The URL the approvers' links open: a URL of this site that a
	// break_glass handler serves, e.g. https://admin.example.com/admin/.
	// Required: a link made from the request would take its host from the
	// Host header of the person signing in, who could point it elsewhere.
	URL string `json:"url,omitempty"`
}

const (
	maxApprovers       = 20
	defaultApprovalTTL = 15 * time.Minute
	// approvalRefresh is how often the waiting page reloads itself.
	approvalRefresh = 5
	// maxDecisionBytes bounds a decision form's body.
	maxDecisionBytes = 4 << 10
)

// approvalPolicy is an approval config, checked.
type approvalPolicy struct {
	approvers []string
	wait      time.Duration
	onTimeout string
	url       *url.URL
}

// provision checks the config; field names the block in its errors.
func (c *ApprovalConfig) provision(repl *caddy.Replacer, field string) (*approvalPolicy, error) {
	p := &approvalPolicy{wait: defaultApprovalTTL, onTimeout: c.OnTimeout}
	if len(c.Approvers) == 0 {
		return nil, fmt.Errorf("%s: approvers: at least one email address", field)
	}
	if len(c.Approvers) > maxApprovers {
		return nil, fmt.Errorf("%s: approvers: at most %d", field, maxApprovers)
	}
	for _, a := range c.Approvers {
		addr, err := resolve(repl, a)
		if err != nil {
			return nil, fmt.Errorf("%s: approvers: %v", field, err)
		}
		if parsed, err := netmail.ParseAddress(addr); err != nil || parsed.Address != addr {
			return nil, fmt.Errorf("%s: approvers: %q: not a plain email address", field, addr)
		}
		if slices.ContainsFunc(p.approvers, func(x string) bool { return strings.EqualFold(x, addr) }) {
			return nil, fmt.Errorf("%s: approvers: %s given twice", field, addr)
		}
		p.approvers = append(p.approvers, addr)
	}
	if c.Wait != 0 {
		p.wait = time.Duration(c.Wait)
	}
	if p.wait < time.Second || p.wait > 24*time.Hour {
		return nil, fmt.Errorf("%s: wait: %v: must be from 1s to 24h", field, p.wait)
	}
	switch c.OnTimeout {
	case onTimeoutGrant, onTimeoutDeny:
	case "":
		return nil, fmt.Errorf("%s: on_timeout: required: deny (approval required) or grant (a veto window: access at the deadline unless someone refuses)", field)
	default:
		return nil, fmt.Errorf("%s: on_timeout: %q: must be deny or grant", field, c.OnTimeout)
	}
	raw, err := resolve(repl, c.URL)
	if err != nil {
		return nil, fmt.Errorf("%s: url: %v", field, err)
	}
	u, err := url.Parse(raw)
	if raw == "" || err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%s: url: %q: required: the http or https URL of a page this door guards, without query or fragment (e.g. https://admin.example.com/admin/)", field, raw)
	}
	if u.Path == "" {
		u.Path = "/"
	}
	p.url = u
	return p, nil
}

// setupApproval provisions the handler's approval block and each account's
// (an account's own replaces the handler's for that account).
func setupApproval(h *Handler, repl *caddy.Replacer) error {
	var common *approvalPolicy
	if h.Approval != nil {
		var err error
		if common, err = h.Approval.provision(repl, "approval"); err != nil {
			return err
		}
	}
	configs, err := accountsOf(h)
	if err != nil {
		return err
	}
	for i, acc := range h.accounts {
		acc.approval = common
		if c := configs[i].Approval; c != nil {
			if acc.approval, err = c.provision(repl, "account "+acc.email+": approval"); err != nil {
				return err
			}
		}
		// A session is bound to its credential, whichever handler issued
		// it: another handler of this config with the same credential must
		// ask the same second person, or its sessions would open this one.
		for _, other := range h.app.handlers.all() {
			if o := other.byScope[acc.scope]; o != nil && !o.approval.same(acc.approval) {
				return fmt.Errorf("account %s: approval: another break_glass handler has this account with another approval (or none), and a session of either opens both: give both the same approval block, or make them two accounts", acc.email)
			}
		}
		if acc.approval == nil {
			continue
		}
		if len(acc.approval.askedFor(acc)) == 0 {
			return fmt.Errorf("account %s: approval: no approver but the account itself (an approver never decides a request of their own account)", acc.email)
		}
		if h.mailer == nil && !h.DevLogCode {
			return errors.New("approval: needs smtp to mail the approvers (in this handler or in the global break_glass options), or dev_log_code for local development")
		}
	}
	return nil
}

// same reports whether two policies (either nil: none) ask the same people
// the same way: the same approvers, wait and on_timeout.
func (p *approvalPolicy) same(q *approvalPolicy) bool {
	if p == nil || q == nil {
		return p == q
	}
	norm := func(list []string) []string {
		out := make([]string, len(list))
		for i, a := range list {
			out[i] = normalizeEmail(a)
		}
		slices.Sort(out)
		return out
	}
	return p.wait == q.wait && p.onTimeout == q.onTimeout && slices.Equal(norm(p.approvers), norm(q.approvers))
}

// site names the site in an approval request: site_name, else the host of
// url — never the Host header of the person signing in, who on a site that
// answers any host could name another one to the approvers.
func (p *approvalPolicy) site(h *Handler) string {
	if h.SiteName != "" {
		return h.SiteName
	}
	return safeHost(p.url.Hostname())
}

// askedFor is who is asked about a request of acc: every approver but the
// account itself.
func (p *approvalPolicy) askedFor(acc *account) []string {
	return slices.DeleteFunc(slices.Clone(p.approvers), func(a string) bool { return normalizeEmail(a) == acc.identity })
}

// approvalID names the approval request of a sign-in flow: a MAC of the
// flow, so that the flow's own browser finds it, every instance with the
// same key too, and nobody learns the flow from it.
func (s *state) approvalID(flow string) string {
	m := hmac.New(sha256.New, s.approvalIDKey)
	m.Write([]byte(flow))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// link is approver's link to rec: the policy's URL with the request, the
// approver, the deadline and the token that binds them.
func (p *approvalPolicy) link(key []byte, rec approvalRecord, approver string) string {
	u := *p.url
	q := url.Values{"break_glass": {actionApproval}, "id": {rec.ID}, "approver": {approver},
		"exp": {strconv.FormatInt(rec.Deadline, 10)}, "token": {approvalToken(key, rec, approver)}}
	u.RawQuery = q.Encode()
	return u.String()
}

// requestApproval ends a sign-in whose second factor f was right, for an
// account that needs a second person: it records the request, asks the
// approvers (and alerts every channel), and sends the browser, under a new
// flow, to its waiting page.
func (a *attempt) requestApproval(acc *account, reason string, f factor) outcome {
	h := a.h
	if spent, err := h.spent(acc); err != nil {
		return a.unavailable(err)
	} else if spent {
		return a.spentPage(acc)
	}
	flow := newFlowID() + "." + acc.scope
	p := acc.approval
	rec := newApprovalRecord(h.state.approvalID(flow), now(), p.wait, approvalRecord{
		Scope: acc.scope, Account: acc.email, Client: a.client.String(), Factor: f.String(), Key: a.keyName,
		Reason: reason, Host: p.site(h), Approvers: p.askedFor(acc), OnTimeout: p.onTimeout,
	})
	if err := h.state.approvals.put(rec); err != nil {
		return a.unavailable(err)
	}
	asks := make([]alertChannel, 0, len(rec.Approvers))
	for _, approver := range rec.Approvers {
		link := p.link(h.state.approvalKey, rec, approver)
		if h.mailer == nil { // dev_log_code: no mail; the link goes to the log
			a.log.Warn("break-glass approval link (dev_log_code)", zap.String("approver", approver), zap.String("link", link))
			continue
		}
		msg := approverMail(approver, rec, link)
		asks = append(asks, alertChannel{kind: "approval_email", target: approver, key: "approval " + approver,
			send: func(ctx context.Context, _ alertEvent) error { return h.mailer.send(ctx, msg) }})
	}
	// With require_alert, the request is the alert: one channel (an
	// approver's mail among them) must confirm it.
	if !a.record(event{kind: evApprovalRequested, acc: acc, reason: reason, approval: &rec, host: rec.Host, extra: asks, confirm: h.RequireAlert,
		fields: []zap.Field{zap.Strings("approvers", rec.Approvers), zap.Time("deadline", time.Unix(0, rec.Deadline))}}) {
		if _, err := h.state.approvals.update(rec.ID, decision(approvalDoor, false)); err != nil {
			a.log.Error("break-glass: refusing an approval request nobody was told of", zap.Error(err))
		}
		return a.unalerted(acc, reason, "no alert channel confirmed the approval request",
			"Your password and second factor were right, but this break-glass sign-in must reach its approvers or the security team first, and no mail or webhook confirmed delivery.")
	}
	return a.back(h.flowCookieFor(a.r, flow))
}

// awaiting answers a browser whose flow made an approval request: the
// waiting page while it is open, the session once it is granted, the
// refusal once refused or timed out. ok is false when the flow has no
// request (any more) here.
func (a *attempt) awaiting(hold bool) (o outcome, ok bool) {
	h, acc := a.h, a.acc
	id := h.state.approvalID(a.flow)
	rec, found, err := h.state.approvals.get(id)
	if err != nil {
		return a.unavailable(err), true
	}
	if !found || rec.Scope != acc.scope || rec.Client != a.client.String() {
		return outcome{}, false
	}
	st := rec.state(now())
	if st == approvalTimedOutGranted || st == approvalTimedOutDenied {
		a.noteTimeout(rec)
	}
	switch st {
	case approvalPending:
		return a.waitingPage(rec, hold), true
	case approvalGranted, approvalTimedOutGranted:
		rec, err := h.state.approvals.update(id, func(r *approvalRecord, t time.Time) error { return r.claim(t) })
		if errors.Is(err, errClaimed) || errors.Is(err, errNotGranted) {
			return outcome{}, false
		}
		if err != nil {
			return a.unavailable(err), true
		}
		f, _ := parseFactor(rec.Factor)
		a.keyName = rec.Key
		return a.startSession(acc, rec.Reason, f, &rec), true
	}
	text := "An approver refused this sign-in. No session was started. If you need access, talk to your security team."
	switch {
	case rec.DecidedBy == approvalDoor:
		text = "No approver or alert channel could be told of this sign-in, so it was refused. No session was started."
	case rec.DecidedBy == approvalAdmin:
		text = "This sign-in was refused on the server (caddy break-glass refuse). No session was started."
	case st == approvalTimedOutDenied:
		text = "Nobody approved this sign-in before its deadline, so it was refused. No session was started. Sign in again to ask again, or reach an approver another way."
	}
	o = a.message(http.StatusForbidden, "", "Access refused", text)
	o.cookies = append(o.cookies, h.flowCookieFor(a.r, ""))
	return o, true
}

// noteTimeout records, once whichever instance sees it first, that rec
// timed out.
func (a *attempt) noteTimeout(rec approvalRecord) {
	if _, err := a.h.state.approvals.update(rec.ID, func(r *approvalRecord, t time.Time) error { return r.noteTimeout(t) }); err != nil {
		if !errors.Is(err, errNotTimedOut) {
			a.log.Error("break-glass: recording an approval request's timeout", zap.Error(err))
		}
		return
	}
	a.record(event{kind: evApprovalTimeout, acc: a.acc, reason: rec.Reason, approval: &rec, host: rec.Host,
		detail: "undecided at its deadline: on_timeout " + rec.OnTimeout})
}

// waitingPage is the operator's page while rec is open. It reloads itself
// (the Refresh header: no script) unless hold, the operator's choice.
func (a *attempt) waitingPage(rec approvalRecord, hold bool) outcome {
	p := a.page("waiting", "Waiting for approval")
	deadline := time.Unix(0, rec.Deadline)
	p.Approval = &approvalView{ID: rec.ID, Approvers: rec.Approvers, Deadline: formatTime(deadline),
		Left: roughly(deadline.Sub(now())), Grant: rec.OnTimeout == onTimeoutGrant, Held: hold}
	check := selfURL(a.r)
	p.Approval.CheckURL = check
	p.Approval.HoldURL = check + queryJoin(check) + "break_glass=" + actionHold
	o := outcome{status: http.StatusAccepted, page: p}
	if !hold {
		o.refresh = approvalRefresh
	}
	return o
}

// queryJoin is what joins one more parameter to u: "?" or "&".
func queryJoin(u string) string {
	if strings.Contains(u, "?") {
		return "&"
	}
	return "?"
}

// roughly is a duration as a person reads it on the waiting page.
func roughly(d time.Duration) string {
	switch {
	case d < time.Minute:
		return "less than a minute"
	case d < 2*time.Minute:
		return "about a minute"
	}
	return fmt.Sprintf("about %d minutes", int(d.Round(time.Minute)/time.Minute))
}

// approvalWatch is how often the app looks for timeouts nobody saw (the
// operator's page closed, no link opened since): App.Start runs
// noteTimeouts that often while some account has approval.
const approvalWatch = 15 * time.Second

// noteTimeouts records every timeout not recorded yet (once, whichever
// instance sees it first).
func (app *App) noteTimeouts() {
	recs, err := app.state.approvals.list()
	if err != nil {
		app.logger.Error("break-glass: reading the approval requests", zap.Error(err))
		return
	}
	for _, rec := range unnotedTimeouts(recs, now()) {
		if a := app.approvalAttempt(nil, rec, nil); a != nil {
			a.noteTimeout(rec)
		}
	}
}
