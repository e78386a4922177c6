// The sign-in attempt of an allowed client without a session: the login
// page, the password step and the code step (its end is in signin.go).
// Each step returns an outcome; respond writes it.

package breakglass

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"
)

const (
	// maxFormBytes bounds a login or code form body; anything larger is 413.
	maxFormBytes = 8 << 10
	// bcryptMaxPassword is the most bcrypt reads of a password; a longer one
	// is refused (bcrypt would silently ignore the rest).
	bcryptMaxPassword = 72
	// maxReason is the longest reason the login form takes, in characters.
	maxReason = 200
)

// attempt is one request of the sign-in flow: the client, its limiter key,
// the browser's flow and a logger naming the client.
type attempt struct {
	h      *Handler
	r      *http.Request
	client netip.Addr
	key    netip.Addr // the client's key in the limiter
	flow   string     // from the flow cookie; "" if none
	// acc is the account the flow's code was issued to: a flow made at a
	// right password ends in that account's scope (see newFlowID).
	acc *account
	log *zap.Logger
	// keyName is the security key that answered, once one did.
	keyName string
}

func (h *Handler) newAttempt(r *http.Request, client netip.Addr) *attempt {
	a := &attempt{h: h, r: r, client: client, key: limiterKey(client), flow: h.flowFrom(r),
		log: h.logger.With(zap.String("client_ip", client.String()))}
	if _, scope, ok := strings.Cut(a.flow, "."); ok {
		a.acc = h.byScope[scope]
	}
	return a
}

// run serves the flow; action is the request's break_glass action. w is
// only for bounding the form's size.
func (a *attempt) run(w http.ResponseWriter, action string) outcome {
	h, r := a.h, a.r
	// Before any parsing or hashing: a locked-out client costs nothing.
	until, locked, err := h.state.limiter.lockedUntil(a.key)
	if err != nil {
		return a.unavailable(err)
	}
	if locked {
		a.record(event{kind: evLocked, fields: []zap.Field{zap.Time("locked_until", until)}})
		return a.lockedOut(until)
	}
	if r.Method != http.MethodPost {
		return a.show(action)
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		if tooBig := new(http.MaxBytesError); errors.As(err, &tooBig) {
			return a.message(http.StatusRequestEntityTooLarge, "", "Request too large", "The form was larger than a sign-in form can be.")
		}
		return a.message(http.StatusBadRequest, "", "Bad request", "The form could not be read.")
	}
	step := r.PostForm.Get("break_glass_step")
	if step == "" {
		// A POST meant for the guarded application, without a session.
		return a.loginPage(http.StatusUnauthorized)
	}
	if a.flow == "" || !h.validCSRF(a.flow, r.PostForm.Get("csrf_token")) {
		a.record(event{kind: evBadCSRF})
		o := a.loginPage(http.StatusForbidden)
		o.page.Error = "This form expired or did not come from this page. Please try again."
		return o
	}
	switch step {
	case "login":
		return a.password()
	case "code":
		return a.code()
	case "webauthn":
		return a.keyStep()
	case "restart":
		if a.acc != nil {
			if err := h.state.codes.cancel(a.acc.scope, a.flow); err != nil {
				return a.unavailable(err)
			}
		}
		return a.back()
	default:
		return a.message(http.StatusBadRequest, "", "Bad request", "Unknown form step.")
	}
}

// show answers a GET: the code form while a code is pending for this
// browser, the approval request's page while it has one, else the login
// form.
func (a *attempt) show(action string) outcome {
	h := a.h
	if a.acc != nil {
		if exp, ok := h.state.codes.pending(a.acc.scope, a.flow, a.client); ok {
			return a.codePage(http.StatusOK, exp, "")
		}
		if a.acc.approval != nil {
			if o, ok := a.awaiting(action == actionHold); ok {
				return o
			}
		}
	}
	if spent, err := h.allSpent(); err != nil {
		return a.unavailable(err)
	} else if spent {
		return a.spentPage(nil)
	}
	a.log.Debug("break-glass login page served")
	o := a.loginPage(http.StatusUnauthorized)
	if action == actionLogout {
		o.page.Notice = "You are signed out."
	}
	if rem := h.state.limiter.remaining(a.key, h.app.lim); rem < h.app.MaxAttempts {
		o.page.Error = fmt.Sprintf("There were failed attempts from your address: %s left before it is locked out.", plural(rem, "attempt"))
	}
	return o
}

// password checks email and password with one comparison per kind of hash
// the accounts use (see checkPassword) whatever is wrong, so that the time
// taken tells nothing.
func (a *attempt) password() outcome {
	h, form := a.h, a.r.PostForm
	email := form.Get("email")
	pw := []byte(form.Get("password"))
	acc := h.lookup(email)
	tooLong := len(pw) > bcryptMaxPassword
	if tooLong {
		pw = pw[:bcryptMaxPassword]
	}
	// The reason is checked before anything costs: it is not an attempt.
	reason := cleanReason(form.Get("reason"))
	if msg := h.reasonProblem(reason); msg != "" {
		o := a.loginPage(http.StatusBadRequest)
		o.page.Email, o.page.Reason, o.page.Error = email, reason, msg
		return o
	}
	if spent, err := h.allSpent(); err != nil {
		return a.unavailable(err)
	} else if spent {
		return a.spentPage(nil)
	}
	// Claim the attempt before hashing, so that attempts sent in parallel
	// cannot add up to more than max_attempts; then wait for a hashing slot,
	// served before clients with more failures.
	c, refused, ok := a.claim(attemptPassword)
	if !ok {
		return refused
	}
	settled := false
	defer a.settleOnPanic(attemptPassword, &settled)
	mem := h.hashMem
	if !h.app.acquireHash(a.r.Context(), c.failures, mem) {
		settled = true
		if _, _, err := a.settle(attemptPassword, chargeNone); err != nil {
			return a.unavailable(err)
		}
		return a.refuse(event{kind: evHashBusy, fields: []zap.Field{zap.Int("max_concurrent_hashes", h.app.MaxConcurrentHashes)}},
			http.StatusServiceUnavailable, 2, "Busy",
			"Too many sign-in attempts are being checked right now. Wait a moment and try again; this did not count as a failed attempt.")
	}
	defer h.app.releaseHash(mem)
	if !h.checkPassword(acc, pw) || tooLong {
		settled = true
		remaining, lockedUntil, err := a.settle(attemptPassword, chargeFailed)
		if err != nil {
			return a.unavailable(err)
		}
		if o, locked := a.failed(event{kind: evBadCredentials}, remaining, lockedUntil); locked {
			return o
		}
		o := a.loginPage(http.StatusUnauthorized)
		o.page.Email, o.page.Reason = email, reason
		o.page.Error = fmt.Sprintf("Wrong email or password. %s left before this address is locked out.", plural(remaining, "attempt"))
		return o
	}
	// Only now, the password being right, may the page say the account is
	// spent: before, it would tell which emails have an account.
	if spent, err := h.spent(acc); err != nil || spent {
		settled = true
		if _, _, serr := a.settle(attemptPassword, chargeNone); serr != nil || err != nil {
			return a.unavailable(errors.Join(err, serr))
		}
		return a.spentPage(acc)
	}
	// A verified client certificate the account accepts is the second
	// factor at once.
	if acc.factors.has(factorClientCert) && acc.certMatches(a.r) {
		settled = true
		// Asking approvers costs the client a code, as any other way to
		// them does, so that their mail is bounded by codes_per_client.
		charged := chargeNone
		if acc.approval != nil {
			charged = chargeCode
		}
		if _, _, err := a.settle(attemptPassword, charged); err != nil {
			return a.unavailable(err)
		}
		return a.signIn(acc, reason, factorClientCert)
	}
	if a.offered(acc) == 0 {
		// The password alone is never enough: with no factor this request
		// can use, the attempt fails as a wrong password does.
		settled = true
		remaining, lockedUntil, err := a.settle(attemptPassword, chargeFailed)
		if err != nil {
			return a.unavailable(err)
		}
		if o, locked := a.failed(event{kind: evNoFactor, acc: acc, reason: reason, detail: "accepted: " + acc.factors.String(),
			fields: []zap.Field{zap.Strings("second_factor", acc.factors.names())}}, remaining, lockedUntil); locked {
			return o
		}
		msg := "This account signs in with a second factor that this connection cannot give (for a client certificate: the browser did not present one the account accepts)."
		if hint := a.keyHint(acc); hint != "" {
			// The account's keys would do by the site's name: the operator
			// can still get in, and should be told how.
			msg = hint
			if acc.factors.has(factorClientCert) {
				msg += " Nor did the browser present a client certificate the account accepts."
			}
		}
		return a.message(http.StatusUnauthorized, "", "No second factor here", msg+" No session was started, and this counted as a failed attempt.")
	}
	// The pending sign-in holds a code: mailed when the account takes
	// email, else a secret never shown, so that it only marks the password
	// as given for this flow (a security key or TOTP code then signs in).
	mailed := acc.factors.has(factorEmail)
	code, err := newCode()
	if !mailed {
		code = newFlowID() + newFlowID()
	}
	if err != nil {
		return outcome{err: err}
	}
	flow := newFlowID() + "." + acc.scope
	// The code is charged to the client (codes per client and window) and
	// to the credential (codes per credential and window).
	exp, perr := h.state.codes.put(acc.scope, code, flow, a.client, time.Duration(h.app.CodeTTL), reason, h.app.codeLim)
	settleAs := chargeCode
	if perr != nil {
		settleAs = chargeNone
	}
	settled = true
	if _, _, err := a.settle(attemptPassword, settleAs); err != nil || (perr != nil && !errors.Is(perr, errCodeBudget)) {
		return a.unavailable(errors.Join(perr, err))
	}
	if perr != nil {
		lim := h.app.codeLim
		return a.refuse(event{kind: evCredentialCodes, acc: acc,
			fields: []zap.Field{zap.Int("codes_per_window", lim.perCredential), zap.Duration("window", lim.window)}},
			http.StatusTooManyRequests, int(math.Ceil(lim.window.Seconds())), "Too many codes",
			"The password is right, but this break-glass account has been sent as many codes as it may in a short time. If that was not you, someone else has the password: tell your security team. Try again later.")
	}
	if !mailed {
		a.record(event{kind: evFactorPending, acc: acc, reason: reason,
			fields: []zap.Field{zap.Strings("second_factor", acc.factors.names()), zap.Time("expires", exp)}})
		return a.back(h.flowCookieFor(a.r, flow))
	}
	a.record(event{kind: evCodeIssued, acc: acc, reason: reason, fields: []zap.Field{zap.Time("code_expires", exp)}})
	if h.DevLogCode {
		a.log.Warn("break-glass code (dev_log_code)", zap.String("email", acc.email), zap.String("code", code), zap.Time("code_expires", exp))
	}
	if h.mailer != nil {
		msg := codeMail(acc.email, code, a.client.String(), h.site(a.r), exp)
		h.state.deliveries.deliver("code_email", a.log.With(zap.String("recipient", acc.email), zap.String("email", acc.email)),
			func(ctx context.Context) error { return h.mailer.send(ctx, msg) }, nil)
	}
	return a.back(h.flowCookieFor(a.r, flow))
}

// code checks the emailed (or TOTP) code. Every code that does not sign in
// counts as a failed attempt for the client.
func (a *attempt) code() outcome {
	h, acc := a.h, a.acc
	code := strings.ReplaceAll(strings.TrimSpace(a.r.PostForm.Get("code")), " ", "")
	// Without a code pending for this browser and client there is nothing
	// to guess: the post costs nothing and is not tracked, so that such
	// posts can never fill the limiter.
	if acc == nil {
		return a.noCode()
	}
	if _, ok := h.state.codes.pending(acc.scope, a.flow, a.client); !ok {
		return a.noCode()
	}
	if !acc.factors.typed() {
		return a.message(http.StatusBadRequest, "", "Bad request", "This account does not sign in with a typed code.")
	}
	used := factorEmail
	var alt altCheck
	if totp := h.totpCheck(acc); totp != nil && acc.factors.has(factorTOTP) {
		alt = func(ctx context.Context, code string) (bool, error) {
			ok, err := totp(ctx, code)
			if ok {
				used = factorTOTP
			}
			return ok, err
		}
	}
	res, reason, remaining, lockedUntil, refused := a.checkPending(acc, code, alt)
	if refused != nil {
		return *refused
	}
	switch res {
	case codeOK:
		return a.signIn(acc, reason, used)
	case codeWrong:
		if o, locked := a.failed(event{kind: evWrongCode}, remaining, lockedUntil); locked {
			return o
		}
		exp, _ := h.state.codes.pending(acc.scope, a.flow, a.client)
		return a.codePage(http.StatusUnauthorized, exp,
			fmt.Sprintf("Wrong code. %s left before this address is locked out.", plural(remaining, "attempt")))
	default: // voided, expired, used, replaced, or not this login's
		if o, locked := a.failed(event{kind: evInvalidCode}, remaining, lockedUntil); locked {
			return o
		}
		o := a.loginPage(http.StatusUnauthorized)
		o.page.Error = fmt.Sprintf("That code is no longer valid (expired, already used, or too many wrong tries). Sign in again. %s left.", plural(remaining, "attempt"))
		return o
	}
}

// checkPending checks an answer to acc's pending sign-in (a typed code,
// or alt's check of a key's answer) as one claimed attempt: anything but a
// sign-in counts as a failure. refused, when not nil, is the answer.
func (a *attempt) checkPending(acc *account, code string, alt altCheck) (res codeResult, reason string, remaining int, lockedUntil time.Time, refused *outcome) {
	if _, o, ok := a.claim(attemptCode); !ok {
		return res, "", 0, time.Time{}, &o
	}
	settled := false
	defer a.settleOnPanic(attemptCode, &settled)
	res, reason, verr := a.h.state.codes.verify(acc.scope, a.flow, a.client, code, alt)
	settled = true
	charge := chargeNone
	if verr == nil && res != codeOK {
		charge = chargeFailed
	}
	remaining, lockedUntil, err := a.settle(attemptCode, charge)
	if verr != nil || err != nil {
		o := a.unavailable(errors.Join(verr, err))
		return res, "", 0, time.Time{}, &o
	}
	return res, reason, remaining, lockedUntil, nil
}

// noCode answers a code posted with no code pending for this browser and
// client.
func (a *attempt) noCode() outcome {
	a.record(event{kind: evNoCode})
	o := a.loginPage(http.StatusUnauthorized)
	o.page.Error = "That code is no longer valid (expired, already used, or too many wrong tries). Sign in again."
	return o
}

// failed records a failure the limiter has counted; when that failure
// locked the client out, it records the lockout (once per lockout) and
// returns the locked page.
func (a *attempt) failed(e event, remaining int, lockedUntil time.Time) (outcome, bool) {
	e.fields = append(e.fields, zap.Int("attempts_remaining", remaining))
	a.record(e)
	if lockedUntil.IsZero() {
		return outcome{}, false
	}
	a.record(event{kind: evLockout, detail: "until " + lockedUntil.UTC().Format(time.RFC3339),
		fields: []zap.Field{zap.Time("locked_until", lockedUntil), zap.Int("max_attempts", a.h.app.MaxAttempts)}})
	return a.lockedOut(lockedUntil), true
}

// claim reserves an attempt for the client in the limiter; when it cannot,
// it returns the refusal.
func (a *attempt) claim(kind attemptKind) (claim, outcome, bool) {
	h := a.h
	c, err := h.state.limiter.reserve(a.key, kind, h.app.lim)
	if err != nil {
		return c, a.unavailable(err), false
	}
	switch c.res {
	case refusedLocked:
		a.record(event{kind: evLocked, fields: []zap.Field{zap.Time("locked_until", c.until)}})
		return c, a.lockedOut(c.until), false
	case refusedInFlight:
		return c, a.refuse(event{kind: evInFlight}, http.StatusTooManyRequests, 1, "Please wait",
			"Other sign-in attempts from your address are still being checked. Wait a moment and try again."), false
	case refusedCodes:
		n := h.app.lim.codesPerClient
		return c, a.refuse(event{kind: evClientCodes, fields: []zap.Field{zap.Int("codes_per_client", n), zap.Time("until", c.until)}},
			http.StatusTooManyRequests, secondsUntil(c.until), "Too many codes",
			fmt.Sprintf("Your address has been sent %s in a short time, as many as it may. Use the last code you got, or try again after %s.",
				plural(n, "code"), formatTime(c.until))), false
	case refusedFull:
		return c, a.refuse(event{kind: evLimiterFull}, http.StatusTooManyRequests, 60, "Please wait",
			"Too many addresses are signing in right now. Try again in a minute."), false
	}
	return c, outcome{}, true
}

// settle ends the attempt claimed by claim, counting what it did.
func (a *attempt) settle(kind attemptKind, c charge) (remaining int, lockedUntil time.Time, err error) {
	return a.h.state.limiter.settle(a.key, kind, c, a.h.app.lim)
}

// settleOnPanic ends a claimed attempt that a panic interrupted (in a
// comparer or a storage module), so that its reservation, or its storage
// lock, is never left behind; the panic goes on.
func (a *attempt) settleOnPanic(kind attemptKind, settled *bool) {
	if *settled {
		return
	}
	if _, _, err := a.settle(kind, chargeNone); err != nil {
		a.log.Error("break-glass: releasing an interrupted attempt", zap.Error(err))
	}
}
