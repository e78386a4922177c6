// The security key step of a sign-in (WebAuthn): the relying party of a
// request, the challenges (derived from a key of the state and the one-time
// pending sign-in, never stored), the options a page gets, and the check of
// the key's answer, which counts as a code check does.

package breakglass

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"
)

// keyTimeout is how long the browser waits for a key: the hint of the
// options. The ceremony itself ends with the pending sign-in (code_ttl).
const keyTimeout = 2 * time.Minute

// relyingParty is the WebAuthn relying party of a request: webauthn_rp_id,
// else the host the request was made to; webauthn_origins, else the
// request's own origin. A host that is an IP address has none (WebAuthn
// needs a domain).
func (h *Handler) relyingParty(r *http.Request) (*relyingParty, error) {
	id := h.WebAuthnRPID
	if id == "" {
		id = strings.ToLower(hostOnly(r.Host))
	}
	origins := h.WebAuthnOrigins
	if len(origins) == 0 {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		origins = []string{scheme + "://" + strings.ToLower(r.Host)}
	}
	return newRelyingParty(id, origins, h.uv, h.site(r))
}

// keyChallenge is the challenge of one ceremony: purpose ("signin" or
// "enroll") of the account's scope, for id (the pending sign-in's flow, or
// the enrolling session). A sign-in's challenge lives as long as its
// pending sign-in, which a right answer consumes and three wrong ones void,
// so an answer is never accepted twice.
func (h *Handler) keyChallenge(purpose, scope, id string) []byte {
	m := hmac.New(sha256.New, h.state.keyKey)
	for _, s := range []string{purpose, scope, id} {
		m.Write([]byte(s))
		m.Write([]byte{0})
	}
	return m.Sum(nil)
}

// offered is what the second-factor page of acc offers this request: the
// typed codes the account takes, and its security keys once it has one and
// the request has a relying party.
func (a *attempt) offered(acc *account) factor {
	s := acc.factors & (factorEmail | factorTOTP)
	if acc.factors.has(factorWebAuthn) && len(acc.keys) > 0 {
		if _, err := a.h.relyingParty(a.r); err == nil {
			s |= factorWebAuthn
		}
	}
	return s
}

// keyHint says why acc's keys cannot be used on this request; it is ""
// when they can, or when the account has none.
func (a *attempt) keyHint(acc *account) string {
	if !acc.factors.has(factorWebAuthn) || len(acc.keys) == 0 {
		return ""
	}
	if _, err := a.h.relyingParty(a.r); err == nil {
		return ""
	}
	return "Security keys cannot be used at this address: open this site by its name, not its IP address."
}

// keyOptions fills the page's WebAuthn part for a sign-in with one of acc's
// keys; it says why when there is none.
func (a *attempt) keyOptions(p *page, acc *account) {
	rp, err := a.h.relyingParty(a.r)
	if err != nil {
		p.Notice = a.keyHint(acc)
		return
	}
	opts, err := rp.assertionOptions(a.h.keyChallenge("signin", acc.scope, a.flow), acc.keys, keyTimeout)
	if err != nil {
		a.log.Error("break-glass: making the security key options", zap.String("email", acc.email), zap.Error(err))
		return
	}
	p.WebAuthn, p.KeyOptions, p.Script = true, json.RawMessage(opts), pageScript
}

// keyStep checks a security key's answer to the pending sign-in's challenge.
// Like a code, a refused answer is a failed attempt and counts against the
// pending sign-in (three void it); a right one consumes it.
func (a *attempt) keyStep() outcome {
	h, acc := a.h, a.acc
	if acc == nil {
		return a.noCode()
	}
	exp, ok := h.state.codes.pending(acc.scope, a.flow, a.client)
	if !ok {
		return a.noCode()
	}
	rp, err := h.relyingParty(a.r)
	if err != nil || !a.offered(acc).has(factorWebAuthn) {
		return a.message(http.StatusBadRequest, "", "Bad request", "This sign-in does not take a security key.")
	}
	body := []byte(a.r.PostForm.Get("credential"))
	if len(body) == 0 {
		return a.codePage(http.StatusBadRequest, exp, "The security key's answer did not arrive. Try again.")
	}
	challenge := h.keyChallenge("signin", acc.scope, a.flow)
	var refusal error
	check := func(ctx context.Context, _ string) (bool, error) {
		name, err := rp.verifyAssertion(ctx, challenge, acc.userHandle, acc.keys, exp, body, h.app.keyCounts)
		switch {
		case err == nil:
			a.keyName = name
			return true, nil
		case errors.Is(err, errAssertion), errors.Is(err, errKeyUnknown), errors.Is(err, errKeyCloned):
			refusal = err
			return false, nil
		}
		return false, err // the counters' storage
	}
	// No typed code is given: only the key's answer can sign in.
	res, reason, remaining, lockedUntil, refused := a.checkPending(acc, "", check)
	if refused != nil {
		return *refused
	}
	if res == codeOK {
		return a.signIn(acc, reason, factorWebAuthn)
	}
	e := event{kind: evKeyRefused, acc: acc, err: refusal}
	msg := "The security key's answer was not accepted."
	switch {
	case errors.Is(refusal, errKeyCloned):
		e.kind = evKeyCloned
		msg = "This security key is refused: its signature counter went backwards, so a copy of it may exist. Tell your security team."
	case errors.Is(refusal, errKeyUnknown):
		msg = "That security key is not one of this account's keys."
	case errors.Is(refusal, errCeremonyExpired):
		msg = "The security key answered too late."
	}
	if refusal != nil {
		e.fields = []zap.Field{zap.String("webauthn", webauthnReason(refusal))}
		e.err = nil
	}
	if o, locked := a.failed(e, remaining, lockedUntil); locked {
		return o
	}
	if res != codeWrong { // that was the last try of this sign-in
		o := a.loginPage(http.StatusUnauthorized)
		o.page.Error = fmt.Sprintf("%s This sign-in is no longer valid (too many tries). Sign in again. %s left.", msg, plural(remaining, "attempt"))
		return o
	}
	return a.codePage(http.StatusUnauthorized, exp, fmt.Sprintf("%s %s left before this address is locked out.", msg, plural(remaining, "attempt")))
}

// keyKnown reports whether a credential ID is already one of the keys of
// any account of this handler.
func (h *Handler) keyKnown(id []byte) bool {
	for _, acc := range h.accounts {
		for _, k := range acc.keys {
			if hmac.Equal(k.id, id) {
				return true
			}
		}
	}
	return false
}
