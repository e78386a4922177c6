// The approvers' side of second-person control: the decision page an
// approver's link opens (from anywhere; nothing without the link's token),
// the decision, and where it is recorded (also the host's, from the admin
// API).

package breakglass

import (
	"crypto/hmac"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// decisionLink is what an approver's link (or the form it shows) carries.
type decisionLink struct {
	id, approver, token string
	exp                 int64
}

// decisionPage serves an approver's link: GET shows the request and the
// form, POST decides. It answers any client, allowed or not, and does
// nothing without a valid token, which is checked (one HMAC) before any
// state is read.
func (h *Handler) decisionPage(w http.ResponseWriter, r *http.Request, client netip.Addr) outcome {
	a := &attempt{h: h, r: r, client: client, log: h.logger.With(zap.String("client_ip", client.String()))}
	var v url.Values
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		v = originalURL(r).Query()
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, maxDecisionBytes)
		if err := r.ParseForm(); err != nil {
			return a.message(http.StatusBadRequest, "", "Bad request", "The form could not be read.")
		}
		v = r.PostForm
	default:
		return a.message(http.StatusMethodNotAllowed, "", "Method not allowed", "An approval link is opened (GET) and its form posted (POST).")
	}
	l := decisionLink{id: v.Get("id"), approver: v.Get("approver"), token: v.Get("token")}
	exp, err := strconv.ParseInt(v.Get("exp"), 10, 64)
	if err != nil || !validApprovalID(l.id) || len(l.approver) > maxEmailBytes || !validToken(h.state.approvalKey, l.id, l.approver, exp, l.token) {
		a.record(event{kind: evApprovalLinkRefused})
		return a.message(http.StatusForbidden, "", "This approval link is not valid",
			"Open the link exactly as the mail gave it. A link works only for the approver it was sent to, for one request.")
	}
	l.exp = exp
	a.log = a.log.With(zap.String("approval", l.id), zap.String("approver", l.approver))
	rec, found, err := h.state.approvals.get(l.id)
	if err != nil {
		return a.unavailable(err)
	}
	if !found {
		return a.message(http.StatusNotFound, "", "This request is no longer known",
			"It ended more than an hour ago, or the server was restarted (with state memory, requests do not survive a restart). Nothing needs to be decided.")
	}
	if st := rec.state(now()); st == approvalTimedOutGranted || st == approvalTimedOutDenied {
		if na := h.app.approvalAttempt(h, rec, r); na != nil {
			na.noteTimeout(rec)
		}
	}
	if r.Method == http.MethodPost {
		if !hmac.Equal([]byte(v.Get("csrf_token")), []byte(h.csrfToken("approval."+l.token))) {
			a.record(event{kind: evBadCSRF})
			return a.message(http.StatusForbidden, "", "This form expired",
				"The form did not come from this page. Open the link from the mail again.")
		}
		choice := v.Get("decision")
		if choice != "approve" && choice != "refuse" {
			return a.message(http.StatusBadRequest, "", "Bad request", "Choose Approve or Refuse.")
		}
		return h.decide(a, rec, l, choice == "approve")
	}
	return h.showDecision(a, rec, l, http.StatusOK, "")
}

// showDecision is the approver's view of rec: its details, and the form
// while the approver may still decide.
func (h *Handler) showDecision(a *attempt, rec approvalRecord, l decisionLink, status int, notice string) outcome {
	t := now()
	p := a.page("decide", "Approve a break-glass sign-in?")
	p.Notice = notice
	p.Action = originalURL(a.r).Path + "?break_glass=" + actionApproval
	deadline := time.Unix(0, rec.Deadline)
	view := &approvalView{ID: rec.ID, Approvers: rec.Approvers, Deadline: formatTime(deadline), Left: roughly(deadline.Sub(t)),
		Grant: rec.OnTimeout == onTimeoutGrant, Account: rec.Account, Client: rec.Client, Site: rec.Host, Reason: rec.Reason,
		Requested: formatTime(time.Unix(0, rec.Created)), Approver: l.approver}
	p.Approval = view
	switch st := rec.state(t); {
	case st == approvalPending && !slices.Contains(rec.Used, strings.ToLower(l.approver)) && rec.isApprover(l.approver):
		view.Form = &decisionForm{ID: l.id, Approver: l.approver, Exp: strconv.FormatInt(l.exp, 10), Token: l.token}
		p.CSRF = h.csrfToken("approval." + l.token)
	default:
		view.Outcome = outcomeText(rec, st)
		p.Title = "Break-glass sign-in: " + st.String()
	}
	return outcome{status: status, page: p}
}

// outcomeText says how rec stands at st, for an approver.
func outcomeText(rec approvalRecord, st approvalState) string {
	by := rec.DecidedBy
	switch by {
	case approvalAdmin:
		by = "on the server (caddy break-glass)"
	case approvalDoor:
		by = "by the door (no alert channel confirmed the request)"
	default:
		by = "by " + by
	}
	switch st {
	case approvalGranted:
		return "This sign-in was approved " + by + "."
	case approvalRefused:
		return "This sign-in was refused " + by + "."
	case approvalTimedOutGranted:
		return "Nobody refused this sign-in before its deadline: it was granted (on_timeout grant)."
	case approvalTimedOutDenied:
		return "Nobody approved this sign-in before its deadline: it was refused (on_timeout deny)."
	}
	return "This request is still open."
}

// decide applies an approver's decision, records it on the handler of the
// request's account, and shows the request as it then is.
func (h *Handler) decide(a *attempt, rec approvalRecord, l decisionLink, approve bool) outcome {
	got, err := h.state.approvals.update(rec.ID, decision(l.approver, approve))
	switch {
	case errors.Is(err, errAlreadyDecided), errors.Is(err, errTokenUsed), errors.Is(err, errPastDeadline):
		return h.showDecision(a, got, l, http.StatusConflict, "Someone decided first, or the request ended; your choice changed nothing.")
	case errors.Is(err, errOwnAccount), errors.Is(err, errNotApprover):
		return a.message(http.StatusForbidden, "", "You cannot decide this request", err.Error()+".")
	case err != nil:
		return a.unavailable(err)
	}
	h.app.recordDecision(h, got, fmt.Sprintf("%s (from %s)", strings.ToLower(l.approver), a.client), a.r)
	verb := "refused: no session will be issued"
	if approve {
		verb = "approved: the operator's page turns into the session within seconds"
	}
	return h.showDecision(a, got, l, http.StatusOK, "Done. The sign-in is "+verb+".")
}

// recordDecision records a decision (log, audit log, alert channels) on the
// handler of rec's account that served its link (via, when it has the
// account), else on the first that has it; by says who decided, and from
// where.
func (app *App) recordDecision(via *Handler, rec approvalRecord, by string, r *http.Request) {
	kind := evRefused
	if rec.Decision == decisionApproved {
		kind = evApproved
	}
	a := app.approvalAttempt(via, rec, r)
	if a == nil {
		// The account is gone from the config (its hash changed): nothing
		// can be signed in by it any more, but the decision is kept.
		app.logger.Warn("break-glass approval decided for an account no longer configured", zap.String("approval", rec.ID),
			zap.String("email", rec.Account), zap.String("decision", rec.Decision), zap.String("decided_by", by))
		app.auditAll(nil, auditRecord{Event: events[kind].audit, Email: rec.Account, Client: rec.Client, Reason: rec.Reason,
			By: by, Approval: rec.ID, Detail: rec.Decision + " by " + by + " (account no longer configured)"})
		return
	}
	a.record(event{kind: kind, acc: a.acc, reason: rec.Reason, approval: &rec, by: by, host: rec.Host,
		detail: rec.Decision + " by " + by, fields: []zap.Field{zap.String("decided_by", by)}})
}

// approvalAttempt is what records the events of rec outside the operator's
// request: an attempt of the operator's client on via (when it has rec's
// account), else on the first handler that has it; nil if none has.
func (app *App) approvalAttempt(via *Handler, rec approvalRecord, r *http.Request) *attempt {
	h := via
	if h == nil || h.byScope[rec.Scope] == nil {
		h = nil
		for _, x := range app.handlers.all() {
			if x.byScope[rec.Scope] != nil {
				h = x
				break
			}
		}
	}
	if h == nil {
		return nil
	}
	client, _ := netip.ParseAddr(rec.Client)
	return &attempt{h: h, r: r, client: client, acc: h.byScope[rec.Scope],
		log: h.logger.With(zap.String("client_ip", rec.Client), zap.String("approval", rec.ID))}
}

// approvalView is what the approval pages show of a request.
type approvalView struct {
	ID        string
	Approvers []string
	Deadline  string
	Left      string
	Grant     bool // on_timeout grant
	// The waiting page: whether it has stopped reloading, and its links.
	Held     bool
	CheckURL string
	HoldURL  string
	// The decision page: the request, the approver, and the form or how
	// the request ended.
	Account, Client, Site, Reason, Requested, Approver string
	Form                                               *decisionForm
	Outcome                                            string
}

// decisionForm is what the decision form posts back besides its CSRF token.
type decisionForm struct{ ID, Approver, Exp, Token string }
