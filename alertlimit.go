// The limits of the alerts anyone allowed can cause: lockout alerts, a few
// a minute across the app, and code_issued alerts, one per credential per
// window; the next one sent counts those held back.

package breakglass

import (
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
)

// maxCodeAlertScopes bounds how many credentials the code_issued limiter
// tracks. There is one per configured credential (a scope is never chosen
// by a client), so the bound is only a backstop: past it, an alert goes
// untracked (never held back) rather than dropped.
const maxCodeAlertScopes = 10000

// codeAlerts limits the code_issued alerts of each credential, by scope. Its
// zero value is ready to use. It is kept per process: with state storage,
// each instance limits its own alerts.
type codeAlerts struct {
	mu      sync.Mutex
	m       map[string]*codeAlertEntry
	sweepAt int // the size at which adding a scope sweeps first
}

type codeAlertEntry struct {
	until     time.Time // the end of the window opened by the last alert sent
	held      int       // alerts held back since that one
	heldSince time.Time // when the first of them was held back
}

// allow says whether a code_issued alert of scope may go at t and, if so,
// how many were held back before it (and since when). An alert sent opens a
// window of the given length in which the scope's further alerts are held
// back.
func (l *codeAlerts) allow(scope string, t time.Time, window time.Duration) (ok bool, held int, since time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.m[scope]
	if e != nil && t.Before(e.until) {
		if e.held == 0 {
			e.heldSince = t
		}
		e.held++
		return false, 0, time.Time{}
	}
	if e == nil {
		if l.m == nil {
			l.m = map[string]*codeAlertEntry{}
		}
		if len(l.m) >= min(max(l.sweepAt, 64), maxCodeAlertScopes) {
			l.sweep(t)
			l.sweepAt = 2 * len(l.m) // amortized: sweeps cost O(1) an insert
		}
		if len(l.m) >= maxCodeAlertScopes {
			return true, 0, time.Time{}
		}
		e = &codeAlertEntry{}
		l.m[scope] = e
	}
	held, since = e.held, e.heldSince
	*e = codeAlertEntry{until: t.Add(window)}
	return true, held, since
}

// sweep drops the entries whose window has ended and that hold nothing back;
// when that leaves the map full, it drops the ended ones that do (their
// count is lost, not their alert: each was logged when held back).
func (l *codeAlerts) sweep(t time.Time) {
	for k, e := range l.m {
		if !t.Before(e.until) && e.held == 0 {
			delete(l.m, k)
		}
	}
	if len(l.m) < maxCodeAlertScopes {
		return
	}
	for k, e := range l.m {
		if !t.Before(e.until) {
			delete(l.m, k)
		}
	}
}

// size is how many scopes are tracked.
func (l *codeAlerts) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// Lockout alerts are limited across the app: at most lockoutAlertsPerWindow
// per lockoutAlertWindow; the next one sent says how many were held back.
const (
	lockoutAlertsPerWindow = 5
	lockoutAlertWindow     = time.Minute
)

// lockoutAlerts counts the lockout alerts of the current window.
type lockoutAlerts struct {
	mu        sync.Mutex
	window    time.Time
	sent      int
	held      int
	heldSince time.Time
}

// allow says whether a lockout alert may go now and, if so, how many were
// held back before it (and since when).
func (l *lockoutAlerts) allow(t time.Time) (ok bool, held int, since time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t.Sub(l.window) >= lockoutAlertWindow {
		l.window, l.sent = t, 0
	}
	if l.sent >= lockoutAlertsPerWindow {
		if l.held == 0 {
			l.heldSince = t
		}
		l.held++
		return false, 0, time.Time{}
	}
	l.sent++
	held, since = l.held, l.heldSince
	l.held = 0
	return true, held, since
}

// bounded sends an alert unless its limit holds it back (per app, or per
// credential scope); the next one sent counts those held back.
func (al *alerts) bounded(ev alertEvent, spec *eventSpec, scope string, log *zap.Logger, extra ...alertChannel) {
	var (
		ok, held = true, 0
		since    time.Time
		what     string
	)
	switch spec.limit {
	case limitApp:
		if ok, held, since = al.state.lockouts.allow(now()); !ok {
			ev.logger(log).Warn("break-glass lockout alert held back: too many lockouts at once; the next lockout alert will count it",
				zap.Int("per_minute", lockoutAlertsPerWindow))
		}
		what = "other lockout"
	case limitCredential:
		if ok, held, since = al.state.codeAlerts.allow(scope, now(), al.window); !ok {
			ev.logger(log).Warn("break-glass code_issued alert held back: one already went for this credential in this window; the next one will count it",
				zap.Duration("window", al.window))
		}
		what = "other code request"
	}
	if !ok {
		return
	}
	if held > 0 {
		ev.Message += heldBackNote(spec.limit, held, what, since)
	}
	al.send(ev, log, extra...)
}

// heldBackNote is what an alert adds about the alerts held back before it.
func heldBackNote(l alertLimit, held int, what string, since time.Time) string {
	if l == limitApp {
		return fmt.Sprintf(". %s were not alerted one by one since %s", plural(held, what), since.UTC().Format(time.RFC3339))
	}
	verb := "were"
	if held == 1 {
		verb = "was"
	}
	return fmt.Sprintf(". %s for this credential %s not alerted one by one since %s", plural(held, what), verb, since.UTC().Format(time.RFC3339))
}
