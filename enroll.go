// Enrolment of a security key or passkey, on the real origin, by an
// operator signed in through the door (?break_glass=enroll): the page, the
// key's answer, and the config line it gives. The config stays the one
// source of truth: an enrolled key signs in once the line is loaded.

package breakglass

import (
	"encoding/json"
	"errors"
	"net/http"

	"go.uber.org/zap"
)

// maxEnrollBytes bounds an enrolment form: an attestation may carry a
// certificate chain.
const maxEnrollBytes = 32 << 10

// enroll serves ?break_glass=enroll to the operator of session s.
func (a *attempt) enroll(w http.ResponseWriter, acc *account, s session) outcome {
	h, r := a.h, a.r
	a.acc = acc
	o := outcome{status: http.StatusOK, page: a.page("enroll", "Register a security key")}
	p := &o.page
	p.Email = acc.email
	if !acc.factors.has(factorWebAuthn) {
		return a.message(http.StatusForbidden, "", "Security keys are not on for this account",
			"This account's second_factor does not list webauthn: add it to the account in the config to register a key.")
	}
	rp, err := h.relyingParty(r)
	if err != nil {
		return a.message(http.StatusBadRequest, "", "Security keys need the site's name",
			"A security key is bound to a domain: open this page by the site's name (not an IP address), or set webauthn_rp_id.")
	}
	csrfID := "enroll." + s.ID
	p.CSRF = h.csrfToken(csrfID)
	challenge := h.keyChallenge("enroll", acc.scope, s.ID)
	opts, err := rp.creationOptions(challenge, acc.userHandle, acc.email, acc.keys, keyTimeout)
	if err != nil {
		return outcome{err: err}
	}
	p.KeyOptions, p.Script, p.WebAuthn = json.RawMessage(opts), pageScript, true
	if r.Method != http.MethodPost {
		return o
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxEnrollBytes)
	if err := r.ParseForm(); err != nil {
		return a.message(http.StatusBadRequest, "", "Bad request", "The form could not be read.")
	}
	if r.PostForm.Get("break_glass_step") != "enroll" || !h.validCSRF(csrfID, r.PostForm.Get("csrf_token")) {
		a.record(event{kind: evBadCSRF})
		o.status, p.Error = http.StatusForbidden, "This form expired or did not come from this page. Please try again."
		return o
	}
	p.KeyName = r.PostForm.Get("name")
	body := []byte(r.PostForm.Get("credential"))
	if len(body) == 0 {
		o.status, p.Error = http.StatusBadRequest, "The security key's answer did not arrive. Try again."
		return o
	}
	cfg, err := rp.verifyCreation(challenge, acc.userHandle, s.Expires, body, p.KeyName, h.keyKnown)
	if err != nil {
		a.log.Info("break-glass key enrolment refused", zap.String("email", acc.email), zap.String("webauthn", webauthnReason(err)))
		o.status = http.StatusBadRequest
		switch {
		case errors.Is(err, errKeyKnown):
			p.Error = "This key is already registered (for this or another account of this door)."
		case errors.Is(err, errKeyName):
			p.Error = "The name cannot be used: " + keyNameProblem(p.KeyName)
		default:
			p.Error = "The security key's answer was not accepted. Try again."
		}
		return o
	}
	line := cfg.caddyfileLine()
	js, _ := json.MarshalIndent(cfg, "", "  ") // strings and a bool: cannot fail
	a.record(event{kind: evKeyEnrolled, acc: acc, detail: "key " + cfg.Name,
		fields: []zap.Field{zap.String("key", cfg.Name), zap.String("aaguid", cfg.AAGUID)}})
	o.page = a.page("enrolled", "Security key registered")
	o.page.Email, o.page.KeyName, o.page.ConfigLine, o.page.ConfigJSON, o.page.Script = acc.email, cfg.Name, line, string(js), pageScript
	return o
}
