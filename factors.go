// The second factors an account accepts after its password (a code by
// email, a TOTP code, a security key, a client certificate): how an
// account's second_factor is read, and the client certificate factor.

package breakglass

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// factor is one second factor, and a set of them as a bit mask.
type factor uint8

const (
	factorEmail      factor = 1 << iota // a code mailed to the account
	factorTOTP                          // the code of the account's authenticator app
	factorWebAuthn                      // a security key or passkey (webauthn_key)
	factorClientCert                    // a verified TLS client certificate (client_cert)
)

// factorNames are the names second_factor takes, in the order the pages
// and the status list them.
var factorNames = [...]struct {
	f    factor
	name string
}{{factorWebAuthn, "webauthn"}, {factorClientCert, "client_cert"}, {factorTOTP, "totp"}, {factorEmail, "email"}}

func (s factor) has(f factor) bool { return s&f != 0 }

// typed reports whether the set takes a typed code (email or TOTP).
func (s factor) typed() bool { return s.has(factorEmail | factorTOTP) }

// names lists the set's factors by name.
func (s factor) names() []string {
	var out []string
	for _, n := range factorNames {
		if s.has(n.f) {
			out = append(out, n.name)
		}
	}
	return out
}

func (s factor) String() string { return strings.Join(s.names(), " ") }

// parseFactor is the factor of one name.
func parseFactor(name string) (factor, bool) {
	for _, n := range factorNames {
		if n.name == name {
			return n.f, true
		}
	}
	return 0, false
}

// factorsOf reads an account's second_factor list. configured is what the
// account has the means for (email always; totp with a totp_secret,
// webauthn with a key, client_cert with a fingerprint or subject); without
// a list, the account accepts all of it, and webauthn (so that a first key
// can be enrolled). A factor listed without its means
// is refused, except webauthn beside another factor: that is how the first
// key is enrolled (signed in with the other one).
func factorsOf(list []string, configured factor) (factor, error) {
	if len(list) == 0 {
		// A key can be enrolled by default; it is offered once there is one.
		return configured | factorWebAuthn, nil
	}
	var s factor
	for _, name := range list {
		f, ok := parseFactor(name)
		if !ok {
			return 0, fmt.Errorf("second_factor: %q: must be webauthn, client_cert, totp or email", name)
		}
		s |= f
	}
	switch {
	case s.has(factorTOTP) && !configured.has(factorTOTP):
		return 0, fmt.Errorf("second_factor totp: needs a totp_secret")
	case s.has(factorClientCert) && !configured.has(factorClientCert):
		return 0, fmt.Errorf("second_factor client_cert: needs a client_cert fingerprint or client_cert_subject")
	case s == factorWebAuthn && !configured.has(factorWebAuthn):
		return 0, fmt.Errorf("second_factor webauthn alone: needs a webauthn_key (enrol the first key while another factor, e.g. email, is also listed)")
	}
	return s, nil
}

// parseFingerprint reads a certificate's SHA-256 fingerprint: 64 hex digits,
// with or without colons, in either case (as openssl x509 -fingerprint
// -sha256 prints it, after the "=").
func parseFingerprint(s string) ([sha256.Size]byte, error) {
	var fp [sha256.Size]byte
	h := strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(s), "sha256:"), ":", "")
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != sha256.Size {
		return fp, fmt.Errorf("client_cert %q: not a SHA-256 fingerprint (64 hex digits, colons allowed)", s)
	}
	copy(fp[:], b)
	return fp, nil
}

// certSubjectTypes are the attribute types Go's pkix.Name.String names, in
// the order it prints them; it prints any other (emailAddress, DC, UID, …)
// as its OID with the value's DER in hex.
var certSubjectTypes = []string{"SERIALNUMBER", "CN", "OU", "O", "POSTALCODE", "STREET", "L", "ST", "C"}

// checkCertSubject refuses a client_cert_subject not written as Go prints
// a subject (certMatches compares the two strings): a part that is not
// TYPE=value (an unescaped comma or plus sign in a value), or an attribute
// Go does not name. openssl's emailAddress=…, DC=… or UID=… never equals
// Go's OID=#hex; such a subject would fail closed, silently, where the
// fingerprint names the certificate plainly.
func checkCertSubject(s string) error {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return errors.New("client_cert_subject: empty, or a control character")
	}
	var parts []string
	start, escaped := 0, false
	for i, r := range s {
		switch {
		case escaped:
			escaped = false
		case r == '\\':
			escaped = true
		case r == ',' || r == '+':
			parts, start = append(parts, s[start:i]), i+1
		}
	}
	for _, part := range append(parts, s[start:]) {
		typ, _, ok := strings.Cut(part, "=")
		if !ok {
			return fmt.Errorf("client_cert_subject %q: %q is not TYPE=value (a comma or plus sign in a value is written \\, or \\+)", s, part)
		}
		if !slices.Contains(certSubjectTypes, typ) {
			return fmt.Errorf("client_cert_subject %q: %q is not an attribute Go names (%s; it prints any other, such as emailAddress, DC or UID, as an OID with the value in hex): list the certificate's SHA-256 fingerprint (client_cert) instead",
				s, typ, strings.Join(certSubjectTypes, ", "))
		}
	}
	return nil
}

// certMatches reports whether the request's connection presented a client
// certificate that Caddy verified (client_auth with a trust pool) and that
// the account accepts, by fingerprint or subject. Only a verified chain
// counts: a certificate a client merely sent (client_auth mode request, or
// require without verification) never does.
func (acc *account) certMatches(r *http.Request) bool {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return false
	}
	leaf := r.TLS.VerifiedChains[0][0]
	fp := sha256.Sum256(leaf.Raw)
	match := 0
	for _, want := range acc.certFingerprints {
		match |= subtle.ConstantTimeCompare(fp[:], want[:])
	}
	if match == 1 {
		return true
	}
	if len(acc.certSubjects) > 0 {
		subject := leaf.Subject.String() // the form checkCertSubject admits
		for _, want := range acc.certSubjects {
			if subject == want {
				return true
			}
		}
	}
	return false
}
