// The WebAuthn factor: security keys and passkeys enrolled in the config, the
// options a page hands to navigator.credentials, the check of what it posts
// back (with go-webauthn), and the sign counter kept per credential.

package breakglass

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/protocol/webauthncose"
	"github.com/go-webauthn/webauthn/webauthn"
)

// WebAuthnKeyConfig is one security key or passkey enrolled for an account.
// The enrolment page (?break_glass=enroll) prints it, in the Caddyfile
// form `webauthn_key "<name>" <id> <public_key> [aaguid <uuid>]
// [backup_eligible]` and as this JSON object, for the operator to paste into
// the account.
type WebAuthnKeyConfig struct {
	// The holder's label for the key, e.g. "YubiKey in safe A": what the
	// logs, alerts and status listing name it by. Required and unique per
	// account; at most 64 characters on one line, with no control
	// characters, no backslash and no `{$` (which the Caddyfile would read
	// as an environment variable).
	Name string `json:"name,omitempty"`

	// The credential ID the key made at enrolment, base64url without
	// padding, as printed. Required; at most 1023 bytes once decoded.
	ID string `json:"id,omitempty"`

	// The credential's public key (a COSE key), base64url without padding,
	// as printed. Required. It is public: a copy lets no one sign in, but a
	// changed one locks the key out.
	PublicKey string `json:"public_key,omitempty"`

	// The authenticator model the key reported at enrolment (its AAGUID),
	// as a UUID; shown in the status listing. Optional: security keys
	// enrolled without attestation often report none.
	AAGUID string `json:"aaguid,omitempty"`

	// Whether the credential is a synced passkey (one the authenticator may
	// back up, e.g. to a phone's cloud account), as reported at enrolment.
	// It must stay as printed: a sign-in whose key reports otherwise is
	// refused.
	BackupEligible bool `json:"backup_eligible,omitempty"`
}

const (
	maxKeyNameLen      = 64   // characters
	maxCredentialIDLen = 1023 // bytes, the WebAuthn bound
	// maxWebAuthnBody bounds what verifyAssertion and verifyCreation parse;
	// a real response is under 2 KiB.
	maxWebAuthnBody = 64 << 10
)

var b64url = base64.RawURLEncoding.Strict()

var (
	// errAssertion wraps every refusal of a sign-in's assertion that is not
	// one of the errors below: its text (go-webauthn's reason) is for the
	// log, never for the page.
	errAssertion = errors.New("webauthn assertion refused")
	// errRegistration wraps every refusal of an enrolment's response other
	// than errKeyKnown.
	errRegistration = errors.New("webauthn registration refused")
	// errCeremonyExpired is wrapped with errAssertion or errRegistration
	// when the response came after the ceremony's expiry.
	errCeremonyExpired = errors.New("the ceremony expired")
	// errKeyUnknown: the assertion is by a credential not among the
	// account's keys (never enrolled, or removed from the config).
	errKeyUnknown = errors.New("webauthn credential not enrolled for this account")
	// errKeyCloned: a valid signature from a key whose sign counter did not
	// increase, now or before: another copy of the key has signed. The key
	// stays refused until its record is cleared or the key re-enrolled.
	errKeyCloned = errors.New("webauthn key's sign counter did not increase: the key may have been cloned")
	// errKeyKnown: an enrolment made a credential that is already enrolled.
	errKeyKnown = errors.New("webauthn credential already enrolled")
	// errKeyName wraps the reason a key's name is refused.
	errKeyName = errors.New("webauthn key name")
)

// checkKeyName refuses a name the Caddyfile form could not carry back
// unchanged, or that would show as something else in a log or listing.
func checkKeyName(name string) error {
	if p := keyNameProblem(name); p != "" {
		return fmt.Errorf("%w: %s", errKeyName, p)
	}
	return nil
}

func keyNameProblem(name string) string {
	switch {
	case name == "":
		return "required"
	case !utf8.ValidString(name):
		return "not valid UTF-8"
	case strings.TrimSpace(name) != name:
		return "starts or ends with a space"
	case utf8.RuneCountInString(name) > maxKeyNameLen:
		return fmt.Sprintf("%d characters; at most %d", utf8.RuneCountInString(name), maxKeyNameLen)
	case strings.Contains(name, `\`):
		return "contains a backslash"
	case strings.Contains(name, "{$"):
		return "contains {$"
	}
	for _, r := range name {
		// Cc: newlines, tabs, escapes; Cf: bidi overrides and invisible
		// marks; Zl, Zp: line and paragraph separators.
		if unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp) {
			return fmt.Sprintf("contains the control character %U", r)
		}
	}
	return ""
}

// cleanKeyName is the name a holder typed at enrolment, trimmed, or why it
// cannot be used.
func cleanKeyName(name string) (string, error) {
	name = strings.TrimSpace(name)
	return name, checkKeyName(name)
}

// caddyfileLine is the key's line in an account block. The name is always
// double-quoted (names may hold spaces and quotes; checkKeyName keeps out
// the backslash, which the Caddyfile's quoting cannot carry before a quote
// or at the end).
func (k WebAuthnKeyConfig) caddyfileLine() string {
	var b strings.Builder
	b.WriteString(`webauthn_key "`)
	b.WriteString(strings.ReplaceAll(k.Name, `"`, `\"`))
	b.WriteString(`" `)
	b.WriteString(k.ID)
	b.WriteString(" ")
	b.WriteString(k.PublicKey)
	if k.AAGUID != "" {
		b.WriteString(" aaguid ")
		b.WriteString(k.AAGUID)
	}
	if k.BackupEligible {
		b.WriteString(" backup_eligible")
	}
	return b.String()
}

// unmarshalWebAuthnKey reads the arguments of a `webauthn_key` line (the
// dispenser is on the directive); newWebAuthnKey checks the values.
func unmarshalWebAuthnKey(d *caddyfile.Dispenser) (WebAuthnKeyConfig, error) {
	var c WebAuthnKeyConfig
	args := d.RemainingArgs()
	if len(args) < 3 {
		return c, d.Errf(`webauthn_key: needs "<name>" <id> <public_key> [aaguid <uuid>] [backup_eligible]`)
	}
	c.Name, c.ID, c.PublicKey = args[0], args[1], args[2]
	label := fmt.Sprintf("webauthn_key %q", c.Name)
	var seenAAGUID bool
	for i := 3; i < len(args); i++ {
		switch args[i] {
		case "aaguid":
			if seenAAGUID || i+1 == len(args) {
				return c, d.Errf("%s: aaguid takes one UUID, once", label)
			}
			seenAAGUID = true
			i++
			c.AAGUID = args[i]
		case "backup_eligible":
			if c.BackupEligible {
				return c, d.Errf("%s: backup_eligible given twice", label)
			}
			c.BackupEligible = true
		default:
			return c, d.Errf("%s: unknown option %q (aaguid, backup_eligible)", label, args[i])
		}
	}
	return c, nil
}

// webauthnKey is a provisioned WebAuthnKeyConfig.
type webauthnKey struct {
	name           string
	id             []byte
	publicKey      []byte // COSE, as go-webauthn takes it
	aaguid         string // canonical UUID, or ""
	aaguidBytes    []byte // 16 bytes, or nil
	backupEligible bool
	countKey       string // where its sign count is kept: hex SHA-256 of id
}

// newWebAuthnKey checks c. Its errors name the key by its name (by its
// position, from newWebAuthnKeys, if it has none) and never show the public
// key.
func newWebAuthnKey(c WebAuthnKeyConfig) (webauthnKey, error) { return provisionKey(c, 0) }

// newWebAuthnKeys provisions an account's keys: names and credential IDs
// must be unique.
func newWebAuthnKeys(cs []WebAuthnKeyConfig) ([]webauthnKey, error) {
	keys := make([]webauthnKey, 0, len(cs))
	for i, c := range cs {
		k, err := provisionKey(c, i+1)
		if err != nil {
			return nil, err
		}
		for _, o := range keys {
			if o.name == k.name {
				return nil, fmt.Errorf("webauthn_key %q: the name is used twice", k.name)
			}
			if bytes.Equal(o.id, k.id) {
				return nil, fmt.Errorf("webauthn_key %q: the same credential as %q", k.name, o.name)
			}
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func provisionKey(c WebAuthnKeyConfig, pos int) (webauthnKey, error) {
	label := fmt.Sprintf("webauthn_key %q", c.Name)
	if c.Name == "" {
		label = "webauthn_key"
		if pos > 0 {
			label = fmt.Sprintf("webauthn_key #%d", pos)
		}
	}
	fail := func(format string, args ...any) (webauthnKey, error) {
		return webauthnKey{}, fmt.Errorf("%s: "+format, append([]any{label}, args...)...)
	}
	if p := keyNameProblem(c.Name); p != "" {
		return fail("name: %s", p)
	}
	k := webauthnKey{name: c.Name, backupEligible: c.BackupEligible}
	var err error
	switch k.id, err = b64url.DecodeString(c.ID); {
	case c.ID == "":
		return fail("id: required")
	case err != nil:
		return fail("id: not base64url without padding")
	case len(k.id) > maxCredentialIDLen:
		return fail("id: %d bytes; a credential ID has at most %d", len(k.id), maxCredentialIDLen)
	}
	switch k.publicKey, err = b64url.DecodeString(c.PublicKey); {
	case c.PublicKey == "":
		return fail("public_key: required")
	case err != nil:
		return fail("public_key: not base64url without padding")
	}
	if _, err := webauthncose.ParsePublicKey(k.publicKey); err != nil {
		// go-webauthn's *protocol.Error details name the problem (key
		// type, algorithm, curve), never the key's bytes; other errors
		// come from its CBOR decoder and are left out.
		var pe *protocol.Error
		if errors.As(err, &pe) && pe.Details != "" {
			return fail("public_key: not a COSE public key go-webauthn can use: %s", pe.Details)
		}
		return fail("public_key: not a COSE public key go-webauthn can use")
	}
	if c.AAGUID != "" {
		if k.aaguidBytes, err = parseUUID(c.AAGUID); err != nil {
			return fail("aaguid: %q: %v", c.AAGUID, err)
		}
		k.aaguid = formatUUID(k.aaguidBytes)
	}
	k.countKey = credentialCountKey(k.id)
	return k, nil
}

// parseUUID reads a UUID in its canonical 8-4-4-4-12 hex form (any case).
func parseUUID(s string) ([]byte, error) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return nil, errors.New("not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
	}
	b, err := hex.DecodeString(s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36])
	if err != nil {
		return nil, errors.New("not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
	}
	return b, nil
}

func formatUUID(b []byte) string {
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// credential is the key as go-webauthn's credential record, with signCount
// as the stored counter.
func (k webauthnKey) credential(signCount uint32) webauthn.Credential {
	return webauthn.Credential{
		ID:              k.id,
		PublicKey:       k.publicKey,
		AttestationType: "none",
		Flags:           webauthn.CredentialFlags{UserPresent: true, BackupEligible: k.backupEligible},
		Authenticator:   webauthn.Authenticator{AAGUID: k.aaguidBytes, SignCount: signCount},
	}
}

// credentialCountKey names a credential in a signCounts: a hash, so that
// the store holds no credential ID.
func credentialCountKey(id []byte) string {
	sum := sha256.Sum256(id)
	return hex.EncodeToString(sum[:])
}

// webauthnUserHandle is the WebAuthn user.id of an account: derived from its
// email alone, so that a key keeps working when the account's hash changes.
// A passkey returns it with each assertion and go-webauthn compares it, so
// changing an account's email means enrolling its passkeys again.
func webauthnUserHandle(identity string) []byte {
	sum := sha256.Sum256([]byte("break_glass webauthn user handle v1\x00" + normalizeEmail(identity)))
	return sum[:]
}

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

// keyRecord is what is kept per credential: the last sign count it
// reported, whether a repeated or lowered count was seen (sticky), and when
// it last signed in.
type keyRecord struct {
	Count        uint32 `json:"count"`
	CloneWarning bool   `json:"clone_warning,omitempty"`
	LastUsed     int64  `json:"last_used,omitempty"` // unix seconds
}

// signCounts keeps a keyRecord per credential, named by
// credentialCountKey. The caller makes load then store atomic (the
// account's code lock).
type signCounts interface {
	load(ctx context.Context, key string) (keyRecord, error)
	store(ctx context.Context, key string, rec keyRecord) error
}

// keyStatus is what the status listing shows of key beside its config.
func keyStatus(ctx context.Context, counts signCounts, key webauthnKey) (keyRecord, error) {
	return counts.load(ctx, key.countKey)
}

// memorySignCounts is a signCounts in this process.
type memorySignCounts struct {
	mu   sync.Mutex
	recs map[string]keyRecord
}

func newMemorySignCounts() *memorySignCounts {
	return &memorySignCounts{recs: map[string]keyRecord{}}
}

func (m *memorySignCounts) load(_ context.Context, key string) (keyRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.recs[key], nil
}

func (m *memorySignCounts) store(_ context.Context, key string, rec keyRecord) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs[key] = rec
	return nil
}

// storageSignCounts keeps the records in Caddy's storage, one JSON object
// under webauthnDir per credential, so that a restart does not forget a
// counter or a clone warning.
type storageSignCounts struct{ st certmagic.Storage }

const webauthnDir = storagePrefix + "webauthn/"

func newStorageSignCounts(st certmagic.Storage) storageSignCounts { return storageSignCounts{st: st} }

func (s storageSignCounts) load(ctx context.Context, key string) (keyRecord, error) {
	var rec keyRecord
	b, err := s.st.Load(ctx, webauthnDir+key)
	switch {
	case notExist(err):
		return rec, nil
	case err != nil:
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("%s%s: %v", webauthnDir, key, err)
	}
	return rec, nil
}

func (s storageSignCounts) store(ctx context.Context, key string, rec keyRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return s.st.Store(ctx, webauthnDir+key, b)
}
