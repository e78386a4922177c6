// The end of a sign-in whose second factor was right: the session it
// starts (or, with approval, the request for one it makes instead), and the
// logout that ends a session.

package breakglass

import (
	"fmt"
	"math"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// signIn ends a sign-in whose second factor f was right: with a session,
// or, when the account needs a second person, with a request for one.
func (a *attempt) signIn(acc *account, reason string, f factor) outcome {
	if acc.approval != nil {
		return a.requestApproval(acc, reason, f)
	}
	return a.startSession(acc, reason, f, nil)
}

// startSession starts the session of a sign-in whose second factor f was
// right (and, with approval, whose request rec granted it).
func (a *attempt) startSession(acc *account, reason string, f factor, rec *approvalRecord) outcome {
	h := a.h
	if h.state.sessions.full() {
		a.log.Error("break-glass session refused: too many revoked sessions are remembered; they expire with their sessions",
			zap.String("email", acc.email))
		return a.message(http.StatusServiceUnavailable, "", "Try again later",
			"No new session can be started right now. Try again later, or ask your security team.")
	}
	uses := 0
	if acc.maxUses > 0 {
		n, ok, err := h.app.uses.claim(acc.credential, acc.maxUses)
		if err != nil {
			return a.unavailable(err)
		}
		if !ok {
			a.record(event{kind: evCredentialUsedUp, acc: acc, reason: reason, detail: "credential spent"})
			return a.spentPage(acc)
		}
		uses = n
	}
	if h.RequireAlert && rec == nil {
		// The alert must cover this login: its head is that of a line
		// written for it. (An approval request was confirmed as its alert.)
		if !a.record(event{kind: evLoginPending, acc: acc, reason: reason, detail: "waiting for an alert channel to confirm (require_alert)"}) {
			if uses > 0 {
				if err := h.app.uses.release(acc.credential); err != nil {
					a.log.Error("break-glass: giving back the use of a refused login", zap.String("email", acc.email), zap.Error(err))
				}
			}
			return a.unalerted(acc, reason, "no alert channel confirmed delivery",
				"Your password and code were right, but this break-glass login must alert the security team first, and no alert channel (email or webhook) confirmed delivery.")
		}
	}
	// A sign-in forgives no failure: the client's limit holds however many
	// credentials it signs in with.
	id, err := newSessionID()
	if err != nil {
		return outcome{err: err}
	}
	t, ttl := now(), time.Duration(h.app.SessionTTL)
	s := session{ID: id, Issued: t, Expires: t.Add(ttl), Client: a.client, Scope: acc.scope}
	cookie := h.cookie(a.r, h.names(a.r).session, h.state.sessions.encode(s), int(math.Ceil(ttl.Seconds())))
	h.state.sessions.track(s)
	used := "second factor " + f.String()
	fields := []zap.Field{zap.Time("session_expires", s.Expires), zap.String("second_factor", f.String())}
	if a.keyName != "" {
		used += fmt.Sprintf(" (key %q)", a.keyName)
		fields = append(fields, zap.String("key", a.keyName))
	}
	e := event{kind: evLogin, acc: acc, reason: reason, alerted: h.RequireAlert && rec == nil,
		detail: used + ", session until " + s.Expires.UTC().Format(time.RFC3339), fields: fields}
	if rec != nil {
		e.approval, e.by = rec, rec.DecidedBy
		e.detail += ", " + outcomeText(*rec, rec.state(t))
		e.fields = append(e.fields, zap.String("approval", rec.ID), zap.String("decided_by", rec.DecidedBy))
	}
	a.record(e)
	if acc.maxUses > 0 && uses >= acc.maxUses {
		a.record(event{kind: evSpent, acc: acc, reason: reason, detail: fmt.Sprintf("after %d uses", uses),
			fields: []zap.Field{zap.Int("max_uses", acc.maxUses)}})
	}
	return a.back(cookie, h.flowCookieFor(a.r, ""))
}

// unalerted refuses a sign-in that require_alert could not announce: what
// says why, to the operator; detail, to the log and audit.
func (a *attempt) unalerted(acc *account, reason, detail, what string) outcome {
	a.record(event{kind: evLoginUnalerted, acc: acc, reason: reason, detail: detail,
		fields: []zap.Field{zap.Duration("waited_up_to", requireAlertWait)}})
	o := a.message(http.StatusServiceUnavailable, "", "Access refused: nobody could be told",
		what+" No session was started. Try again in a moment, or reach your security team another way.")
	o.cookies = append(o.cookies, a.h.flowCookieFor(a.r, ""))
	return o
}

// logout revokes the session server-side, so a replayed cookie stops working.
func (a *attempt) logout(acc *account, s session) outcome {
	h := a.h
	if err := h.state.revoke(s); err != nil {
		a.log.Error("break-glass logout not written to storage: other instances accept the session until it expires",
			zap.String("email", acc.email), zap.Error(err))
	}
	a.record(event{kind: evLogout, acc: acc})
	o := a.loginPage(http.StatusOK)
	o.cookies = append(o.cookies, h.cookie(a.r, h.names(a.r).session, "", -1))
	o.page.Notice = "You are signed out."
	return o
}
