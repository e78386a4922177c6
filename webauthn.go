// The WebAuthn factor's ceremonies, with go-webauthn: the relying party of
// a handler, the options a page hands to navigator.credentials, and the
// checks of what it posts back (an assertion at sign-in, a new credential at
// enrolment).

package breakglass

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/protocol/webauthncose"
	"github.com/go-webauthn/webauthn/webauthn"
)

// relyingParty is the WebAuthn relying party a handler's sign-in page is:
// its RP ID, the origins its pages are served at, and the user verification
// it asks of keys.
type relyingParty struct {
	id          string
	origins     []string
	uv          protocol.UserVerificationRequirement
	displayName string
	wa          *webauthn.WebAuthn
}

// newRelyingParty checks the settings: id is a domain (not an IP address);
// each origin is scheme://host[:port] with host id or a subdomain of it,
// https except for localhost; uv is required, preferred or discouraged (""
// is preferred). displayName, shown by some authenticators at enrolment,
// defaults to id.
func newRelyingParty(id string, origins []string, uv protocol.UserVerificationRequirement, displayName string) (*relyingParty, error) {
	if id == "" {
		return nil, errors.New("rp_id: required")
	}
	if net.ParseIP(strings.Trim(id, "[]")) != nil {
		return nil, fmt.Errorf("rp_id: %q: an IP address cannot be a WebAuthn RP ID; use a domain name (localhost for tests)", id)
	}
	if id != strings.ToLower(id) || strings.ContainsAny(id, ":/ ") || strings.HasPrefix(id, ".") || strings.HasSuffix(id, ".") {
		return nil, fmt.Errorf("rp_id: %q: must be a lower-case domain name, without scheme or port", id)
	}
	if err := protocol.ValidateRPID(id); err != nil {
		return nil, fmt.Errorf("rp_id: %q: %v", id, err)
	}
	if len(origins) == 0 {
		return nil, errors.New("origins: at least one is required")
	}
	for _, o := range origins {
		if err := checkOrigin(o, id); err != nil {
			return nil, fmt.Errorf("origins: %q: %v", o, err)
		}
	}
	switch uv {
	case "":
		uv = protocol.VerificationPreferred
	case protocol.VerificationRequired, protocol.VerificationPreferred, protocol.VerificationDiscouraged:
	default:
		return nil, fmt.Errorf("user_verification: %q: must be required, preferred or discouraged", uv)
	}
	if displayName == "" {
		displayName = id
	}
	wa, err := webauthn.New(&webauthn.Config{
		RPID:          id,
		RPDisplayName: displayName,
		RPOrigins:     origins,
		// No extension is asked for, and none is relied on: an output a
		// browser or password manager adds unasked is not a reason to
		// refuse the key.
		ExtensionsUnsolicitedOutputPolicy: protocol.UnsolicitedOutputPolicyIgnore,
	})
	if err != nil {
		return nil, err
	}
	return &relyingParty{id: id, origins: origins, uv: uv, displayName: displayName, wa: wa}, nil
}

// checkOrigin accepts an origin a browser would send for a page the RP ID
// rpID can be used on.
func checkOrigin(o, rpID string) error {
	u, err := url.Parse(o)
	if err != nil {
		return errors.New("not a URL")
	}
	if u.Scheme != "https" && u.Scheme != "http" || u.Host == "" || u.User != nil ||
		u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || strings.ContainsAny(o, "?#") {
		return errors.New("must be scheme://host[:port], with no path")
	}
	host := u.Hostname()
	if host != strings.ToLower(host) {
		return errors.New("the host must be lower case")
	}
	if host != rpID && !strings.HasSuffix(host, "."+rpID) {
		return fmt.Errorf("the host is not %s or a subdomain of it: browsers refuse the RP ID there", rpID)
	}
	if u.Scheme == "http" && host != "localhost" && !strings.HasSuffix(host, ".localhost") {
		return errors.New("must be https (browsers offer WebAuthn over http only on localhost)")
	}
	return nil
}

// webauthnUser is an account as go-webauthn sees it.
type webauthnUser struct {
	handle []byte
	name   string
	creds  []webauthn.Credential
}

func (u *webauthnUser) WebAuthnID() []byte                         { return u.handle }
func (u *webauthnUser) WebAuthnName() string                       { return u.name }
func (u *webauthnUser) WebAuthnDisplayName() string                { return u.name }
func (u *webauthnUser) WebAuthnCredentials() []webauthn.Credential { return u.creds }

// withChallenge and withTimeout set what go-webauthn would otherwise choose:
// the caller's challenge, and the timeout in milliseconds.
func withChallenge(challenge []byte) webauthn.RegistrationOption {
	return func(o *protocol.PublicKeyCredentialCreationOptions) error {
		o.Challenge = challenge
		return nil
	}
}

func timeoutMillis(d time.Duration) (int, error) {
	if d < time.Millisecond {
		return 0, errors.New("the timeout must be at least 1ms")
	}
	return int(d.Milliseconds()), nil
}

// descriptors are keys as allowCredentials or excludeCredentials entries.
func descriptors(keys []webauthnKey) []protocol.CredentialDescriptor {
	out := make([]protocol.CredentialDescriptor, len(keys))
	for i, k := range keys {
		out[i] = protocol.CredentialDescriptor{Type: protocol.PublicKeyCredentialType, CredentialID: k.id}
	}
	return out
}

// assertionOptions is the JSON a sign-in page passes to
// PublicKeyCredential.parseRequestOptionsFromJSON() and then, as publicKey,
// to navigator.credentials.get(): challenge, timeout (ms), rpId,
// allowCredentials (the keys' IDs, base64url) and userVerification.
func (rp *relyingParty) assertionOptions(challenge []byte, keys []webauthnKey, timeout time.Duration) ([]byte, error) {
	if len(keys) == 0 {
		return nil, errors.New("webauthn: the account has no keys")
	}
	ms, err := timeoutMillis(timeout)
	if err != nil {
		return nil, err
	}
	// A discoverable login's options with allowCredentials set are a
	// non-discoverable login's, without a user to make up.
	assertion, _, err := rp.wa.BeginDiscoverableLogin(
		webauthn.WithChallenge(challenge),
		webauthn.WithUserVerification(rp.uv),
		webauthn.WithAllowedCredentials(descriptors(keys)),
		func(o *protocol.PublicKeyCredentialRequestOptions) error { o.Timeout = ms; return nil })
	if err != nil {
		return nil, err
	}
	return json.Marshal(assertion.Response)
}

// verifyAssertion checks body, the JSON of the PublicKeyCredential a sign-in
// page got from navigator.credentials.get() with assertionOptions(challenge,
// keys, …), and returns the name of the key that signed. It is made for one
// caller at a time per account (the account's code lock): it reads the key's
// sign count from counts, checks it, and writes it back.
//
// Errors: errKeyUnknown (a credential not among keys), errKeyCloned (a
// valid signature but a counter that did not increase, now or on an earlier
// sign-in), one wrapping errAssertion (anything else wrong with the
// response, errCeremonyExpired once expires has passed), or the store's
// error (nothing was decided).
func (rp *relyingParty) verifyAssertion(ctx context.Context, challenge, userHandle []byte, keys []webauthnKey, expires time.Time, body []byte, counts signCounts) (string, error) {
	if !now().Before(expires) {
		return "", fmt.Errorf("%w: %w", errAssertion, errCeremonyExpired)
	}
	if len(body) > maxWebAuthnBody {
		return "", fmt.Errorf("%w: the response is %d bytes", errAssertion, len(body))
	}
	parsed, err := protocol.ParseCredentialRequestResponseBytes(body)
	if err != nil {
		return "", fmt.Errorf("%w: %s", errAssertion, webauthnReason(err))
	}
	at := -1
	for i, k := range keys {
		if bytes.Equal(k.id, parsed.RawID) {
			at = i
		}
	}
	if at < 0 {
		return "", errKeyUnknown
	}
	key := keys[at]
	rec, err := counts.load(ctx, key.countKey)
	if err != nil {
		return "", fmt.Errorf("webauthn key %q: loading its sign count: %w", key.name, err)
	}

	creds := make([]webauthn.Credential, len(keys))
	ids := make([][]byte, len(keys))
	for i, k := range keys {
		creds[i], ids[i] = k.credential(0), k.id
	}
	creds[at] = key.credential(rec.Count)
	// The session go-webauthn would have kept, rebuilt from the caller's
	// values. Expires is left zero: the expiry is checked above, on the
	// package clock.
	session := webauthn.SessionData{
		Challenge:            b64url.EncodeToString(challenge),
		RelyingPartyID:       rp.id,
		UserID:               userHandle,
		AllowedCredentialIDs: ids,
		UserVerification:     rp.uv,
	}
	got, err := rp.wa.ValidateLogin(&webauthnUser{handle: userHandle, creds: creds}, session, parsed)
	if err != nil {
		return "", fmt.Errorf("%w: key %q: %s", errAssertion, key.name, webauthnReason(err))
	}
	if rec.CloneWarning {
		return "", errKeyCloned
	}
	if got.Authenticator.CloneWarning {
		rec.CloneWarning = true
		if err := counts.store(ctx, key.countKey, rec); err != nil {
			return "", fmt.Errorf("webauthn key %q: recording its clone warning: %w", key.name, err)
		}
		return "", errKeyCloned
	}
	rec.Count, rec.LastUsed = got.Authenticator.SignCount, now().Unix()
	if err := counts.store(ctx, key.countKey, rec); err != nil {
		return "", fmt.Errorf("webauthn key %q: storing its sign count: %w", key.name, err)
	}
	return key.name, nil
}

// credentialParameters are the algorithms asked for at enrolment, in order
// of preference: what security keys and passkeys make.
var credentialParameters = []protocol.CredentialParameter{
	{Type: protocol.PublicKeyCredentialType, Algorithm: webauthncose.AlgES256},
	{Type: protocol.PublicKeyCredentialType, Algorithm: webauthncose.AlgEdDSA},
	{Type: protocol.PublicKeyCredentialType, Algorithm: webauthncose.AlgRS256},
}

// creationOptions is the JSON an enrolment page passes to
// PublicKeyCredential.parseCreationOptionsFromJSON() and then, as publicKey,
// to navigator.credentials.create(). It asks for no attestation and a
// non-discoverable credential (sign-in names the account's keys, so a
// security key need not spend one of its few resident slots), and excludes
// the account's keys already enrolled.
func (rp *relyingParty) creationOptions(challenge, userHandle []byte, userName string, exclude []webauthnKey, timeout time.Duration) ([]byte, error) {
	ms, err := timeoutMillis(timeout)
	if err != nil {
		return nil, err
	}
	creation, _, err := rp.wa.BeginRegistration(&webauthnUser{handle: userHandle, name: userName},
		withChallenge(challenge),
		webauthn.WithConveyancePreference(protocol.PreferNoAttestation),
		webauthn.WithAuthenticatorSelection(protocol.AuthenticatorSelection{
			ResidentKey:      protocol.ResidentKeyRequirementDiscouraged,
			UserVerification: rp.uv,
		}),
		webauthn.WithExclusions(descriptors(exclude)),
		webauthn.WithCredentialParameters(credentialParameters),
		func(o *protocol.PublicKeyCredentialCreationOptions) error { o.Timeout = ms; return nil })
	if err != nil {
		return nil, err
	}
	return json.Marshal(creation.Response)
}

// verifyCreation checks body, the JSON of the PublicKeyCredential an
// enrolment page got from navigator.credentials.create() with
// creationOptions(challenge, userHandle, …), and returns the key's config
// for the operator, named name. known reports a credential ID enrolled
// already (for any account; nil: none): go-webauthn takes an excluded
// key's second credential, so it is refused here with errKeyKnown. Other errors wrap
// errKeyName or errRegistration.
func (rp *relyingParty) verifyCreation(challenge, userHandle []byte, expires time.Time, body []byte, name string, known func(id []byte) bool) (WebAuthnKeyConfig, error) {
	var c WebAuthnKeyConfig
	name, err := cleanKeyName(name)
	if err != nil {
		return c, err
	}
	if !now().Before(expires) {
		return c, fmt.Errorf("%w: %w", errRegistration, errCeremonyExpired)
	}
	if len(body) > maxWebAuthnBody {
		return c, fmt.Errorf("%w: the response is %d bytes", errRegistration, len(body))
	}
	parsed, err := protocol.ParseCredentialCreationResponseBytes(body)
	if err != nil {
		return c, fmt.Errorf("%w: %s", errRegistration, webauthnReason(err))
	}
	session := webauthn.SessionData{
		Challenge:        b64url.EncodeToString(challenge),
		RelyingPartyID:   rp.id,
		UserID:           userHandle,
		UserVerification: rp.uv,
		CredParams:       credentialParameters,
	}
	cred, err := rp.wa.CreateCredential(&webauthnUser{handle: userHandle}, session, parsed)
	if err != nil {
		return c, fmt.Errorf("%w: %s", errRegistration, webauthnReason(err))
	}
	if len(cred.ID) > maxCredentialIDLen {
		return c, fmt.Errorf("%w: a credential ID of %d bytes", errRegistration, len(cred.ID))
	}
	if known != nil && known(cred.ID) {
		return c, errKeyKnown
	}
	c = WebAuthnKeyConfig{
		Name:           name,
		ID:             b64url.EncodeToString(cred.ID),
		PublicKey:      b64url.EncodeToString(cred.PublicKey),
		BackupEligible: cred.Flags.BackupEligible,
	}
	if len(cred.Authenticator.AAGUID) == 16 && !bytes.Equal(cred.Authenticator.AAGUID, make([]byte, 16)) {
		c.AAGUID = formatUUID(cred.Authenticator.AAGUID)
	}
	// What is printed must provision: a key go-webauthn made but could not
	// read back is refused now, not at the operator's next reload.
	if _, err := newWebAuthnKey(c); err != nil {
		return WebAuthnKeyConfig{}, fmt.Errorf("%w: %v", errRegistration, err)
	}
	return c, nil
}

// webauthnReason is go-webauthn's account of a refusal, for the log: its
// details and debug text, except the challenge comparison's debug text,
// which holds the expected challenge.
func webauthnReason(err error) string {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		return err.Error()
	}
	if pe.DevInfo == "" || pe.Details == "Error validating challenge" {
		return pe.Details
	}
	return pe.Details + " (" + pe.DevInfo + ")"
}
