// What an attempt answers (a page or a redirect, its status, headers and
// cookies), the one function that writes it, and the pages an attempt
// builds.

package breakglass

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// outcome is what an attempt answers.
type outcome struct {
	status     int
	page       page
	redirect   string // a 303 to this URL instead of a page
	retryAfter int    // seconds, sent when above 0
	refresh    int    // seconds after which the page reloads itself (the Refresh header), when above 0
	cookies    []*http.Cookie
	err        error // an internal error: Caddy's error handling answers
}

// respond writes an outcome.
func (h *Handler) respond(w http.ResponseWriter, r *http.Request, o outcome) error {
	if o.err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, o.err)
	}
	for _, c := range o.cookies {
		http.SetCookie(w, c)
	}
	if o.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(o.retryAfter))
	}
	if o.refresh > 0 {
		w.Header().Set("Refresh", strconv.Itoa(o.refresh))
	}
	if o.redirect != "" {
		http.Redirect(w, r, o.redirect, http.StatusSeeOther)
		return nil
	}
	return render(w, r, o.status, o.page)
}

// page fills what every page shows.
func (a *attempt) page(kind, title string) page {
	return page{Kind: kind, Title: title, Action: selfURL(a.r), Client: a.client.String(), Host: hostOnly(a.r.Host)}
}

// message is a short page: a title and a text.
func (a *attempt) message(status int, kind, title, text string) outcome {
	if kind == "" {
		kind = "message"
	}
	p := a.page(kind, title)
	p.Error = text
	return outcome{status: status, page: p}
}

// loginPage is the login form with a CSRF token, starting a new flow (the
// flow cookie) when the browser has none.
func (a *attempt) loginPage(status int) outcome {
	o := outcome{status: status, page: a.page("login", "Break-glass sign-in")}
	if a.flow == "" {
		a.flow = newFlowID()
		o.cookies = append(o.cookies, a.h.flowCookieFor(a.r, a.flow))
	}
	o.page.CSRF = a.h.csrfToken(a.flow)
	o.page.ReasonRequired = a.h.RequireReason
	return o
}

// codePage is the form of the code of this flow, which expires at exp.
func (a *attempt) codePage(status int, exp time.Time, errMsg string) outcome {
	p := a.page("code", "Enter your code")
	p.CSRF = a.h.csrfToken(a.flow)
	if acc := a.acc; acc != nil {
		p.Mailed, p.TOTP = acc.factors.has(factorEmail), acc.factors.has(factorTOTP)
		if acc.factors.has(factorWebAuthn) && len(acc.keys) > 0 {
			a.keyOptions(&p, acc)
		}
		if p.WebAuthn && !p.Mailed && !p.TOTP {
			p.Title = "Use your security key"
		}
	}
	p.Expires = formatTime(exp)
	p.Error = errMsg
	return outcome{status: status, page: p}
}

// lockedOut is the page of a client locked out until until.
func (a *attempt) lockedOut(until time.Time) outcome {
	p := a.page("locked", "Temporarily locked out")
	p.Until = formatTime(until)
	return outcome{status: http.StatusTooManyRequests, page: p, retryAfter: secondsUntil(until)}
}

// refuse records an attempt that could not be checked (it is not a
// failure, and is not counted) and answers status with Retry-After.
func (a *attempt) refuse(e event, status, retryAfter int, title, text string) outcome {
	a.record(e)
	o := a.message(status, "", title, text)
	o.retryAfter = retryAfter
	return o
}

// unavailable answers 503 when the state cannot be read or written (a
// storage backend is down): sign-ins fail closed, nothing is forgiven.
func (a *attempt) unavailable(err error) outcome {
	return a.refuse(event{kind: evUnavailable, err: err}, http.StatusServiceUnavailable, 10, "Temporarily unavailable",
		"Break-glass sign-in cannot be checked right now. Try again in a moment; sessions already open keep working.")
}

// spentPage says an account (or, with acc nil, every account) has had its
// max_uses logins.
func (a *attempt) spentPage(acc *account) outcome {
	if acc == nil {
		return a.message(http.StatusForbidden, "", "Credential spent",
			"Every break-glass credential has been used as many times as it may (max_uses). None works any more: ask your security team to set a new break-glass password.")
	}
	return a.message(http.StatusForbidden, "", "Credential spent",
		fmt.Sprintf("This break-glass credential has been used %s, as many times as it may (max_uses). It no longer works: ask your security team to set a new break-glass password.",
			plural(acc.maxUses, "time")))
}

// back sends the browser back to the URL it asked for (303).
func (a *attempt) back(cookies ...*http.Cookie) outcome {
	return outcome{redirect: selfURL(a.r), cookies: cookies}
}

// secondsUntil is a Retry-After: whole seconds until t, at least 1.
func secondsUntil(t time.Time) int {
	return max(int(math.Ceil(t.Sub(now()).Seconds())), 1)
}
