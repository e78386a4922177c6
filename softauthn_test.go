// A software WebAuthn authenticator for tests: one ES256 credential on a fake
// security key that answers go-webauthn's registration and login options with
// the JSON bodies a browser would post (PublicKeyCredential.toJSON()), so
// tests can register and use a key without a browser. It makes "none"
// attestations and DER ECDSA P-256 assertions with crypto/ecdsa and
// go-webauthn's own CBOR encoder (protocol/webauthncbor), so it needs no
// module of its own. Its fields are the knobs a test turns to make a response
// the server must refuse or flag.

package breakglass

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"testing"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/protocol/webauthncbor"
	"github.com/go-webauthn/webauthn/protocol/webauthncose"
)

// softKey is one credential on a software security key.
type softKey struct {
	key    *ecdsa.PrivateKey
	credID []byte   // 32 random bytes
	aaguid [16]byte // zero, as Chromium's virtual authenticator reports

	// rpID is the RP ID whose SHA-256 goes into authenticatorData; it is not
	// taken from the options, so a test can set another one (a real key is
	// bound to the RP ID it was registered for).
	rpID string
	// counter is the sign counter the next response (create or get) carries;
	// each response then adds one. Set it to repeat or lower the counter.
	counter uint32
	// noCounter makes a key that never counts (most passkeys): every
	// response carries 0 and counter is left alone.
	noCounter bool
	up, uv    bool // the user present / user verified flags; newSoftKey sets both
	be, bs    bool // the backup eligible / backup state flags (a synced passkey)

	// userHandle is the user.id of the last registration options; get sends
	// it as the assertion's userHandle when it is set.
	userHandle []byte
}

// newSoftKey makes a key with a fresh P-256 key pair and credential ID for
// rpID, with UP and UV set and the counter at 0.
func newSoftKey(t testing.TB, rpID string) *softKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := make([]byte, 32)
	rand.Read(id)
	return &softKey{key: key, credID: id, rpID: rpID, up: true, uv: true}
}

// create answers navigator.credentials.create(creation) on a page at origin
// (the origin clientDataJSON names): the body of a RegistrationResponseJSON
// with a "none" attestation. creation can be BeginRegistration's value or the
// options JSON a page got, decoded into a protocol.CredentialCreation.
func (k *softKey) create(t testing.TB, origin string, creation *protocol.CredentialCreation) []byte {
	t.Helper()
	o := creation.Response
	switch id := o.User.ID.(type) { // URLEncodedBase64 from BeginRegistration, a string after JSON
	case protocol.URLEncodedBase64:
		k.userHandle = id
	case []byte:
		k.userHandle = id
	case string:
		b, err := base64.RawURLEncoding.DecodeString(id)
		if err != nil {
			t.Fatalf("softKey: user.id %q: %v", id, err)
		}
		k.userHandle = b
	default:
		t.Fatalf("softKey: user.id of type %T", o.User.ID)
	}

	// COSE_Key for ES256: {1: 2 (EC2), 3: -7 (ES256), -1: 1 (P-256), -2: x, -3: y}.
	pub, err := k.key.PublicKey.Bytes() // 0x04 || X(32) || Y(32)
	if err != nil {
		t.Fatal(err)
	}
	cose, err := webauthncbor.Marshal(map[int64]any{
		1:  int64(webauthncose.EllipticKey),
		3:  int64(webauthncose.AlgES256),
		-1: int64(webauthncose.P256),
		-2: pub[1:33],
		-3: pub[33:65],
	})
	if err != nil {
		t.Fatal(err)
	}
	// attestedCredentialData = aaguid(16) | credIdLen(2, big endian) | credId | COSE_Key
	att := append([]byte{}, k.aaguid[:]...)
	att = binary.BigEndian.AppendUint16(att, uint16(len(k.credID)))
	att = append(att, k.credID...)
	att = append(att, cose...)

	attObj, err := webauthncbor.Marshal(map[string]any{
		"fmt":      "none",
		"attStmt":  map[string]any{},
		"authData": k.authData(byte(protocol.FlagAttestedCredentialData), att),
	})
	if err != nil {
		t.Fatal(err)
	}
	return k.body(t, map[string]any{
		"clientDataJSON":    base64.RawURLEncoding.EncodeToString(k.clientData(protocol.CreateCeremony, o.Challenge, origin)),
		"attestationObject": base64.RawURLEncoding.EncodeToString(attObj),
		"transports":        []string{"usb"},
	})
}

// get answers navigator.credentials.get(assertion) on a page at origin: the
// body of an AuthenticationResponseJSON signed with the credential's key.
// assertion can be BeginLogin's value or the options JSON a page got.
func (k *softKey) get(t testing.TB, origin string, assertion *protocol.CredentialAssertion) []byte {
	t.Helper()
	ad := k.authData(0, nil)
	cd := k.clientData(protocol.AssertCeremony, assertion.Response.Challenge, origin)
	cdHash := sha256.Sum256(cd)
	digest := sha256.Sum256(append(append([]byte{}, ad...), cdHash[:]...))
	sig, err := ecdsa.SignASN1(rand.Reader, k.key, digest[:]) // DER, as go-webauthn requires
	if err != nil {
		t.Fatal(err)
	}
	resp := map[string]any{
		"clientDataJSON":    base64.RawURLEncoding.EncodeToString(cd),
		"authenticatorData": base64.RawURLEncoding.EncodeToString(ad),
		"signature":         base64.RawURLEncoding.EncodeToString(sig),
	}
	if k.userHandle != nil {
		resp["userHandle"] = base64.RawURLEncoding.EncodeToString(k.userHandle)
	}
	return k.body(t, resp)
}

// authData = rpIdHash(32) | flags(1) | signCount(4, big endian) | attested;
// it uses the counter and advances it (unless noCounter).
func (k *softKey) authData(extra byte, attested []byte) []byte {
	flags := extra
	for _, f := range []struct {
		on  bool
		bit protocol.AuthenticatorFlags
	}{{k.up, protocol.FlagUserPresent}, {k.uv, protocol.FlagUserVerified}, {k.be, protocol.FlagBackupEligible}, {k.bs, protocol.FlagBackupState}} {
		if f.on {
			flags |= byte(f.bit)
		}
	}
	h := sha256.Sum256([]byte(k.rpID))
	out := append(h[:], flags)
	if k.noCounter {
		out = binary.BigEndian.AppendUint32(out, 0)
	} else {
		out = binary.BigEndian.AppendUint32(out, k.counter)
		k.counter++
	}
	return append(out, attested...)
}

// clientData is clientDataJSON in a browser's member order (go-webauthn
// parses it; it never compares it as a string).
func (k *softKey) clientData(typ protocol.CeremonyType, challenge protocol.URLEncodedBase64, origin string) []byte {
	cd, _ := json.Marshal(struct {
		Type        string `json:"type"`
		Challenge   string `json:"challenge"`
		Origin      string `json:"origin"`
		CrossOrigin bool   `json:"crossOrigin"`
	}{string(typ), base64.RawURLEncoding.EncodeToString(challenge), origin, false})
	return cd
}

// body is the PublicKeyCredential.toJSON() around response.
func (k *softKey) body(t testing.TB, response map[string]any) []byte {
	t.Helper()
	id := base64.RawURLEncoding.EncodeToString(k.credID)
	b, err := json.Marshal(map[string]any{
		"id":                      id,
		"rawId":                   id,
		"type":                    "public-key",
		"response":                response,
		"clientExtensionResults":  map[string]any{},
		"authenticatorAttachment": "cross-platform",
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
