// The WebAuthn factor (webauthn.go) and the go-webauthn v0.18.2 behaviour it
// builds on, driven with a softKey: first the library alone (what it refuses
// or only flags; an upgrade that changes it fails here first), then
// enrolment, sign-in, sign counters and the config's printers.

package breakglass

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"
)

// A WebAuthn RP ID cannot be an IP, so these tests use localhost.
const (
	waRPID   = "localhost"
	waOrigin = "http://localhost:8080"
)

// waUser is a go-webauthn User with the credentials registered so far.
type waUser struct {
	id    []byte
	creds []webauthn.Credential
}

func (u *waUser) WebAuthnID() []byte                         { return u.id }
func (u *waUser) WebAuthnName() string                       { return "alice@example.com" }
func (u *waUser) WebAuthnDisplayName() string                { return "alice@example.com" }
func (u *waUser) WebAuthnCredentials() []webauthn.Credential { return u.creds }

func newTestWebAuthn(t *testing.T) (*webauthn.WebAuthn, *waUser) {
	t.Helper()
	wa, err := webauthn.New(&webauthn.Config{
		RPID:          waRPID,
		RPDisplayName: "break glass",
		RPOrigins:     []string{waOrigin},
		Timeouts: webauthn.TimeoutsConfig{
			Login:        webauthn.TimeoutConfig{Enforce: true, Timeout: 2 * time.Minute},
			Registration: webauthn.TimeoutConfig{Enforce: true, Timeout: 2 * time.Minute},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return wa, &waUser{id: []byte("0123456789abcdef0123456789abcdef")}
}

// waRegister registers k for u (and keeps the credential on u), failing the test on any error.
func waRegister(t *testing.T, wa *webauthn.WebAuthn, u *waUser, k *softKey, opts ...webauthn.RegistrationOption) *webauthn.Credential {
	t.Helper()
	creation, session, err := wa.BeginRegistration(u, opts...)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := waFinishRegistration(wa, u, *session, k.create(t, waOrigin, creation))
	if err != nil {
		t.Fatalf("registration: %v", err)
	}
	u.creds = append(u.creds, *cred)
	return cred
}

func waFinishRegistration(wa *webauthn.WebAuthn, u *waUser, session webauthn.SessionData, body []byte) (*webauthn.Credential, error) {
	parsed, err := protocol.ParseCredentialCreationResponseBytes(body)
	if err != nil {
		return nil, err
	}
	return wa.CreateCredential(u, session, parsed)
}

func waFinishLogin(wa *webauthn.WebAuthn, u *waUser, session webauthn.SessionData, body []byte) (*webauthn.Credential, error) {
	parsed, err := protocol.ParseCredentialRequestResponseBytes(body)
	if err != nil {
		return nil, err
	}
	return wa.ValidateLogin(u, session, parsed)
}

// viaJSON decodes v's JSON into a fresh T: the options as a page gets them,
// or a SessionData as a store keeps it.
func viaJSON[T any](t *testing.T, v any) *T {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out := new(T)
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSoftKeyRegistersAndSignsInThroughGoWebAuthn(t *testing.T) {
	for _, tc := range []struct {
		name  string
		key   func(k *softKey)
		uv    protocol.UserVerificationRequirement
		flags webauthn.CredentialFlags // what the credential records
	}{
		{"security key with a PIN, UV required", func(*softKey) {}, protocol.VerificationRequired,
			webauthn.CredentialFlags{UserPresent: true, UserVerified: true}},
		{"security key without a PIN, UV discouraged", func(k *softKey) { k.uv = false }, protocol.VerificationDiscouraged,
			webauthn.CredentialFlags{UserPresent: true}},
		{"synced passkey (backed up), UV preferred", func(k *softKey) { k.be, k.bs = true, true }, protocol.VerificationPreferred,
			webauthn.CredentialFlags{UserPresent: true, UserVerified: true, BackupEligible: true, BackupState: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wa, u := newTestWebAuthn(t)
			k := newSoftKey(t, waRPID)
			tc.key(k)

			creation, rsession, err := wa.BeginRegistration(u,
				webauthn.WithAuthenticatorSelection(protocol.AuthenticatorSelection{
					ResidentKey: protocol.ResidentKeyRequirementDiscouraged, UserVerification: tc.uv}),
				webauthn.WithConveyancePreference(protocol.PreferNoAttestation))
			if err != nil {
				t.Fatal(err)
			}
			// The options and the session go through JSON, as to a page and a store.
			body := k.create(t, waOrigin, viaJSON[protocol.CredentialCreation](t, creation))
			cred, err := waFinishRegistration(wa, u, *viaJSON[webauthn.SessionData](t, rsession), body)
			if err != nil {
				t.Fatalf("registration: %v", err)
			}
			if string(cred.ID) != string(k.credID) || cred.AttestationFormat != "none" || cred.Authenticator.SignCount != 0 {
				t.Errorf("credential: ID %x (key %x), format %q, count %d", cred.ID, k.credID, cred.AttestationFormat, cred.Authenticator.SignCount)
			}
			if got := cred.Flags; got.UserPresent != tc.flags.UserPresent || got.UserVerified != tc.flags.UserVerified ||
				got.BackupEligible != tc.flags.BackupEligible || got.BackupState != tc.flags.BackupState {
				t.Errorf("flags %+v, want %+v", got, tc.flags)
			}
			u.creds = []webauthn.Credential{*cred}

			for want := uint32(1); want <= 2; want++ {
				assertion, lsession, err := wa.BeginLogin(u, webauthn.WithUserVerification(tc.uv))
				if err != nil {
					t.Fatal(err)
				}
				body := k.get(t, waOrigin, viaJSON[protocol.CredentialAssertion](t, assertion))
				got, err := waFinishLogin(wa, u, *viaJSON[webauthn.SessionData](t, lsession), body)
				if err != nil {
					t.Fatalf("login %d: %v", want, err)
				}
				if got.Authenticator.SignCount != want || got.Authenticator.CloneWarning {
					t.Fatalf("login %d: count %d, clone warning %v", want, got.Authenticator.SignCount, got.Authenticator.CloneWarning)
				}
				u.creds = []webauthn.Credential{*got} // the counter is written back by the caller
			}
		})
	}
}

// waWant is what one case must give: an error, or a credential.
type waWant struct {
	errType string // the protocol.Error's Type; "" means no error
	err     string // in err.Error() (the Details: what a log shows, never the user)
	info    string // in the protocol.Error's DevInfo
	unknown bool   // the error is a *protocol.ErrorUnknownCredential

	clone bool   // no error: Authenticator.CloneWarning
	count uint32 // no error: the SignCount returned
}

func (w waWant) check(t *testing.T, cred *webauthn.Credential, err error) {
	t.Helper()
	if w.errType == "" {
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		if cred.Authenticator.CloneWarning != w.clone || cred.Authenticator.SignCount != w.count {
			t.Fatalf("clone warning %v, count %d; want %v, %d", cred.Authenticator.CloneWarning, cred.Authenticator.SignCount, w.clone, w.count)
		}
		return
	}
	if err == nil {
		t.Fatalf("accepted (clone warning %v, count %d), want %s %q", cred.Authenticator.CloneWarning, cred.Authenticator.SignCount, w.errType, w.err)
	}
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %T %v is not a *protocol.Error", err, err)
	}
	if pe.Type != w.errType || !strings.Contains(err.Error(), w.err) || !strings.Contains(pe.DevInfo, w.info) {
		t.Errorf("error type %q, %q, info %q; want %q, %q, info with %q", pe.Type, err, pe.DevInfo, w.errType, w.err, w.info)
	}
	var uc *protocol.ErrorUnknownCredential
	if errors.As(err, &uc) != w.unknown {
		t.Errorf("ErrorUnknownCredential: %v, want %v", !w.unknown, w.unknown)
	}
}

func TestGoWebAuthnRefusesOrFlags(t *testing.T) {
	var (
		refusedOrigin = waWant{errType: "verification_error", err: "Error validating origin"}
		refusedRPHash = waWant{errType: "verification_error", err: "Error validating the authenticator response", info: "RP Hash mismatch"}
		refusedNoUP   = waWant{errType: "verification_error", err: "Error validating the authenticator response", info: "User presence required but flag not set"}
		refusedNoUV   = waWant{errType: "verification_error", err: "Error validating the authenticator response", info: "User verification required but flag not set"}
		refusedChall  = waWant{errType: "verification_error", err: "Error validating challenge"}
	)

	t.Run("register", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			opts   []webauthn.RegistrationOption
			key    func(k *softKey)
			origin string // in clientDataJSON; waOrigin if empty
			prior  bool   // the key is registered once first (and excluded in the new options)
			replay bool   // send the prior registration's body again
			want   waWant
		}{
			{name: "origin with another port", origin: "http://localhost:8443", want: refusedOrigin},
			{name: "origin 127.0.0.1 for localhost", origin: "http://127.0.0.1:8080", want: refusedOrigin},
			{name: "origin https for http", origin: "https://localhost:8080", want: refusedOrigin},
			{name: "RP ID hash of another RP", key: func(k *softKey) { k.rpID = "example.com" }, want: refusedRPHash},
			{name: "UP clear", key: func(k *softKey) { k.up = false }, want: refusedNoUP},
			{name: "UV clear, UV required",
				opts: []webauthn.RegistrationOption{webauthn.WithAuthenticatorSelection(protocol.AuthenticatorSelection{UserVerification: protocol.VerificationRequired})},
				key:  func(k *softKey) { k.uv = false }, want: refusedNoUV},
			{name: "UV clear, UV preferred: accepted",
				opts: []webauthn.RegistrationOption{webauthn.WithAuthenticatorSelection(protocol.AuthenticatorSelection{UserVerification: protocol.VerificationPreferred})},
				key:  func(k *softKey) { k.uv = false }, want: waWant{}},
			{name: "replayed body, new session", prior: true, replay: true, want: refusedChall},
			// The exclusion list is only for the browser: a key registered
			// again is accepted, so the caller must refuse a known ID itself.
			{name: "same key again, excluded: accepted", prior: true, want: waWant{count: 1}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				wa, u := newTestWebAuthn(t)
				k := newSoftKey(t, waRPID)
				var body []byte
				var opts []webauthn.RegistrationOption
				if tc.prior {
					creation, session, err := wa.BeginRegistration(u)
					if err != nil {
						t.Fatal(err)
					}
					body = k.create(t, waOrigin, creation)
					cred, err := waFinishRegistration(wa, u, *session, body)
					if err != nil {
						t.Fatal(err)
					}
					u.creds = append(u.creds, *cred)
					opts = append(opts, webauthn.WithExclusions([]protocol.CredentialDescriptor{cred.Descriptor()}))
				}
				if tc.key != nil {
					tc.key(k)
				}
				origin := tc.origin
				if origin == "" {
					origin = waOrigin
				}
				creation, session, err := wa.BeginRegistration(u, append(opts, tc.opts...)...)
				if err != nil {
					t.Fatal(err)
				}
				if !tc.replay {
					body = k.create(t, origin, creation)
				}
				cred, err := waFinishRegistration(wa, u, *session, body)
				tc.want.check(t, cred, err)
			})
		}
	})

	t.Run("login", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			setup   func(k *softKey) // before registration
			prior   int              // good logins first, counters written back: the stored SignCount
			opts    []webauthn.LoginOption
			key     func(t *testing.T, k *softKey) *softKey // the key that answers: k changed, or another
			origin  string                                  // in clientDataJSON; waOrigin if empty
			session func(s *webauthn.SessionData)           // what a forged or stale session would change
			replay  string                                  // "new session" or "same session": send the last prior login's body again
			want    waWant
		}{
			{name: "origin with another port", origin: "http://localhost:8443", want: refusedOrigin},
			{name: "origin 127.0.0.1 for localhost", origin: "http://127.0.0.1:8080", want: refusedOrigin},
			{name: "RP ID hash of another RP", key: func(_ *testing.T, k *softKey) *softKey { k.rpID = "example.com"; return k }, want: refusedRPHash},
			{name: "UP clear", key: func(_ *testing.T, k *softKey) *softKey { k.up = false; return k }, want: refusedNoUP},
			{name: "UV clear, UV required",
				opts: []webauthn.LoginOption{webauthn.WithUserVerification(protocol.VerificationRequired)},
				key:  func(_ *testing.T, k *softKey) *softKey { k.uv = false; return k }, want: refusedNoUV},
			{name: "UV clear, UV preferred: accepted",
				opts: []webauthn.LoginOption{webauthn.WithUserVerification(protocol.VerificationPreferred)},
				key:  func(_ *testing.T, k *softKey) *softKey { k.uv = false; return k }, want: waWant{count: 1}},
			{name: "another key's signature on this credential ID", key: func(t *testing.T, k *softKey) *softKey {
				o := newSoftKey(t, waRPID)
				o.credID, o.userHandle, o.counter = k.credID, k.userHandle, 100
				return o
			}, want: waWant{errType: "invalid_signature", err: "Error validating the assertion signature"}},
			{name: "unknown credential", key: func(t *testing.T, _ *softKey) *softKey { return newSoftKey(t, waRPID) },
				want: waWant{errType: "invalid_request", err: "The credential ID provided is not owned by the user", unknown: true}},
			{name: "BE flag set, clear when registered", key: func(_ *testing.T, k *softKey) *softKey { k.be = true; return k },
				want: waWant{errType: "invalid_request", err: "Backup Eligible flag inconsistency"}},
			{name: "session expired", session: func(s *webauthn.SessionData) { s.Expires = time.Now().Add(-time.Second) },
				want: waWant{errType: "invalid_request", err: "Session has Expired"}},
			{name: "session challenge altered", session: func(s *webauthn.SessionData) { s.Challenge = strings.Repeat("A", 43) }, want: refusedChall},
			{name: "replayed assertion, new session", prior: 1, replay: "new session", want: refusedChall},

			// Not errors: only CloneWarning, with the stored counter kept.
			{name: "replayed assertion, same session (not burnt): flagged", prior: 1, replay: "same session", want: waWant{clone: true, count: 1}},
			{name: "same counter, new session: flagged", prior: 1,
				key: func(_ *testing.T, k *softKey) *softKey { k.counter = 1; return k }, want: waWant{clone: true, count: 1}},
			{name: "lowered counter: flagged", prior: 3,
				key: func(_ *testing.T, k *softKey) *softKey { k.counter = 1; return k }, want: waWant{clone: true, count: 3}},
			{name: "counter 0 after counting: flagged", prior: 2,
				key: func(_ *testing.T, k *softKey) *softKey { k.counter = 0; return k }, want: waWant{clone: true, count: 2}},

			// A key that never counts is not even flagged: only a one-time challenge stops a replay.
			{name: "key that never counts, new session: accepted", setup: func(k *softKey) { k.noCounter = true }, prior: 1, want: waWant{count: 0}},
			{name: "key that never counts, replayed assertion, same session: accepted", setup: func(k *softKey) { k.noCounter = true },
				prior: 1, replay: "same session", want: waWant{count: 0}},
			{name: "higher counter after a gap: accepted", prior: 1,
				key: func(_ *testing.T, k *softKey) *softKey { k.counter = 50; return k }, want: waWant{count: 50}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				wa, u := newTestWebAuthn(t)
				k := newSoftKey(t, waRPID)
				if tc.setup != nil {
					tc.setup(k)
				}
				waRegister(t, wa, u, k)

				var body []byte
				var session *webauthn.SessionData
				for i := range tc.prior {
					assertion, s, err := wa.BeginLogin(u)
					if err != nil {
						t.Fatal(err)
					}
					body, session = k.get(t, waOrigin, assertion), s
					cred, err := waFinishLogin(wa, u, *s, body)
					if err != nil {
						t.Fatalf("prior login %d: %v", i+1, err)
					}
					u.creds = []webauthn.Credential{*cred}
				}

				if tc.replay != "same session" {
					assertion, s, err := wa.BeginLogin(u, tc.opts...)
					if err != nil {
						t.Fatal(err)
					}
					session = s
					if tc.replay == "" {
						answer := k
						if tc.key != nil {
							answer = tc.key(t, k)
						}
						origin := tc.origin
						if origin == "" {
							origin = waOrigin
						}
						body = answer.get(t, origin, assertion)
					}
				}
				if tc.session != nil {
					tc.session(session)
				}
				cred, err := waFinishLogin(wa, u, *session, body)
				tc.want.check(t, cred, err)
			})
		}
	})
}

// The factor built on it (webauthn.go): enrolment and sign-in through
// relyingParty with the caller's challenge and expiry, the sign counter and
// its sticky clone warning, the options' JSON, and the config's printers.

// waFlow is one account's WebAuthn as the sign-in flow drives it.
type waFlow struct {
	rp     *relyingParty
	handle []byte
	counts signCounts
	clock  *testClock
}

func newWAFlow(t *testing.T, uv protocol.UserVerificationRequirement) *waFlow {
	t.Helper()
	rp, err := newRelyingParty(waRPID, []string{waOrigin}, uv, "break glass")
	if err != nil {
		t.Fatal(err)
	}
	return &waFlow{rp: rp, handle: webauthnUserHandle("Alice@Example.com"), counts: newMemorySignCounts(), clock: useTestClock(t)}
}

// waChallenge is a fresh 32-byte challenge, as the flow derives one per
// pending sign-in.
func waChallenge(t *testing.T) []byte {
	t.Helper()
	c := make([]byte, 32)
	if _, err := rand.Read(c); err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *waFlow) expires() time.Time { return f.clock.Now().Add(2 * time.Minute) }

// creation is what an enrolment page gets, decoded as softKey takes it.
func (f *waFlow) creation(t *testing.T, challenge []byte, exclude []webauthnKey) *protocol.CredentialCreation {
	t.Helper()
	b, err := f.rp.creationOptions(challenge, f.handle, "alice@example.com", exclude, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c := new(protocol.CredentialCreation)
	if err := json.Unmarshal(b, &c.Response); err != nil {
		t.Fatal(err)
	}
	return c
}

// assertion is what a sign-in page gets, decoded as softKey takes it.
func (f *waFlow) assertion(t *testing.T, challenge []byte, keys []webauthnKey) *protocol.CredentialAssertion {
	t.Helper()
	b, err := f.rp.assertionOptions(challenge, keys, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	a := new(protocol.CredentialAssertion)
	if err := json.Unmarshal(b, &a.Response); err != nil {
		t.Fatal(err)
	}
	return a
}

// enrol registers k as name and provisions the printed config.
func (f *waFlow) enrol(t *testing.T, k *softKey, name string) (WebAuthnKeyConfig, webauthnKey) {
	t.Helper()
	ch := waChallenge(t)
	c, err := f.rp.verifyCreation(ch, f.handle, f.expires(), k.create(t, waOrigin, f.creation(t, ch, nil)), name, func([]byte) bool { return false })
	if err != nil {
		t.Fatalf("enrolment: %v", err)
	}
	key, err := newWebAuthnKey(c)
	if err != nil {
		t.Fatalf("provisioning the printed config: %v", err)
	}
	return c, key
}

// signIn is one sign-in of k at origin with a fresh challenge.
func (f *waFlow) signIn(t *testing.T, k *softKey, origin string, keys []webauthnKey) (string, error) {
	t.Helper()
	ch := waChallenge(t)
	return f.rp.verifyAssertion(context.Background(), ch, f.handle, keys, f.expires(), k.get(t, origin, f.assertion(t, ch, keys)), f.counts)
}

func (f *waFlow) status(t *testing.T, key webauthnKey) keyRecord {
	t.Helper()
	rec, err := keyStatus(context.Background(), f.counts, key)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestWebAuthnEnrolsAndSignsIn(t *testing.T) {
	for _, tc := range []struct {
		name   string
		uv     protocol.UserVerificationRequirement
		key    func(k *softKey)
		be     bool     // printed backup_eligible
		counts []uint32 // the stored count after each sign-in
	}{
		{"security key with a PIN, UV required", protocol.VerificationRequired, func(*softKey) {}, false, []uint32{1, 2, 3}},
		{"security key without a PIN, UV discouraged", protocol.VerificationDiscouraged, func(k *softKey) { k.uv = false }, false, []uint32{1, 2, 3}},
		{"synced passkey that never counts, UV preferred", "", func(k *softKey) { k.be, k.bs, k.noCounter = true, true, true }, true, []uint32{0, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newWAFlow(t, tc.uv)
			k := newSoftKey(t, waRPID)
			tc.key(k)
			k.aaguid = [16]byte{0xcb, 0x69, 0x48, 0x1e, 0x8f, 0xf7, 0x40, 0x39, 0x93, 0xec, 0x0a, 0x27, 0x29, 0xa1, 0x54, 0xa8}
			c, key := f.enrol(t, k, "  YubiKey \"A\" in the safe ")
			want := WebAuthnKeyConfig{Name: `YubiKey "A" in the safe`, ID: b64url.EncodeToString(k.credID),
				AAGUID: "cb69481e-8ff7-4039-93ec-0a2729a154a8", BackupEligible: tc.be, PublicKey: c.PublicKey}
			if c != want {
				t.Errorf("printed %+v, want %+v", c, want)
			}
			if key.aaguid != want.AAGUID || key.name != want.Name {
				t.Errorf("provisioned name %q, aaguid %q", key.name, key.aaguid)
			}
			other := newSoftKey(t, waRPID)
			_, otherKey := f.enrol(t, other, "backup key")
			keys := []webauthnKey{otherKey, key}
			for i, count := range tc.counts {
				f.clock.Advance(time.Hour)
				name, err := f.signIn(t, k, waOrigin, keys)
				if err != nil || name != want.Name {
					t.Fatalf("sign-in %d: %q, %v", i+1, name, err)
				}
				if rec := f.status(t, key); rec != (keyRecord{Count: count, LastUsed: f.clock.Now().Unix()}) {
					t.Fatalf("after sign-in %d: %+v, want count %d, last used now", i+1, rec, count)
				}
			}
			if rec := f.status(t, otherKey); rec != (keyRecord{}) {
				t.Errorf("the other key's record: %+v", rec)
			}
			if name, err := f.signIn(t, other, waOrigin, keys); err != nil || name != "backup key" {
				t.Errorf("the other key: %q, %v", name, err)
			}
		})
	}
}

func TestWebAuthnSignInRefuses(t *testing.T) {
	secret := func(key webauthnKey, challenge []byte) []string {
		return []string{b64url.EncodeToString(key.publicKey), b64url.EncodeToString(challenge), base64.StdEncoding.EncodeToString(challenge)}
	}
	for _, tc := range []struct {
		name   string
		uv     protocol.UserVerificationRequirement
		setup  func(k *softKey) // before enrolment
		prior  int              // good sign-ins first
		answer func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) (body []byte, signInKeys []webauthnKey, verifyChallenge []byte)
		want   error
		reason string // in the error (go-webauthn's, for the log)
		after  keyRecord
	}{
		{name: "origin with another port", prior: 1,
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				return k.get(t, "http://localhost:8443", f.assertion(t, ch, keys)), keys, ch
			}, want: errAssertion, reason: "Error validating origin", after: keyRecord{Count: 1}},
		{name: "key registered for another RP ID",
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				k.rpID = "example.com"
				return k.get(t, waOrigin, f.assertion(t, ch, keys)), keys, ch
			}, want: errAssertion, reason: "RP Hash mismatch"},
		{name: "a challenge other than the one given",
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				return k.get(t, waOrigin, f.assertion(t, waChallenge(t), keys)), keys, ch
			}, want: errAssertion, reason: "Error validating challenge"},
		{name: "UV clear, UV required", uv: protocol.VerificationRequired,
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				k.uv = false
				return k.get(t, waOrigin, f.assertion(t, ch, keys)), keys, ch
			}, want: errAssertion, reason: "User verification required"},
		{name: "UP clear",
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				k.up = false
				return k.get(t, waOrigin, f.assertion(t, ch, keys)), keys, ch
			}, want: errAssertion, reason: "User presence required"},
		{name: "BE set, clear at enrolment",
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				k.be = true
				return k.get(t, waOrigin, f.assertion(t, ch, keys)), keys, ch
			}, want: errAssertion, reason: "Backup Eligible flag inconsistency"},
		{name: "BE clear, set at enrolment", setup: func(k *softKey) { k.be = true },
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				k.be = false
				return k.get(t, waOrigin, f.assertion(t, ch, keys)), keys, ch
			}, want: errAssertion, reason: "Backup Eligible flag inconsistency"},
		{name: "user handle of another account",
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				k.userHandle = webauthnUserHandle("mallory@example.com")
				return k.get(t, waOrigin, f.assertion(t, ch, keys)), keys, ch
			}, want: errAssertion, reason: "User handle and User ID do not match"},
		{name: "another key's signature on this credential ID, with a lower counter", prior: 2,
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				o := newSoftKey(t, waRPID)
				o.credID, o.userHandle = k.credID, k.userHandle
				return o.get(t, waOrigin, f.assertion(t, ch, keys)), keys, ch
			}, want: errAssertion, reason: "Error validating the assertion signature", after: keyRecord{Count: 2}},
		{name: "not an assertion",
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				return []byte(`{"id":"AAAA","rawId":"AAAA","type":"public-key"}`), keys, ch
			}, want: errAssertion},
		{name: "a registration's body",
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				return k.create(t, waOrigin, f.creation(t, ch, nil)), keys, ch
			}, want: errAssertion},
		{name: "too long", answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
			return bytes.Repeat([]byte(" "), maxWebAuthnBody+1), keys, ch
		}, want: errAssertion},
		{name: "expired ceremony", prior: 1,
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				body := k.get(t, waOrigin, f.assertion(t, ch, keys))
				f.clock.Advance(2 * time.Minute) // expires() was taken before: now is the expiry
				return body, keys, ch
			}, want: errCeremonyExpired, after: keyRecord{Count: 1}},
		{name: "unknown credential", prior: 1,
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				return newSoftKey(t, waRPID).get(t, waOrigin, f.assertion(t, ch, keys)), keys, ch
			}, want: errKeyUnknown, after: keyRecord{Count: 1}},
		{name: "key removed from the config", prior: 1,
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				_, other := f.enrol(t, newSoftKey(t, waRPID), "other")
				return k.get(t, waOrigin, f.assertion(t, ch, keys)), []webauthnKey{other}, ch
			}, want: errKeyUnknown, after: keyRecord{Count: 1}},
		{name: "lowered counter", prior: 3,
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				k.counter = 1
				return k.get(t, waOrigin, f.assertion(t, ch, keys)), keys, ch
			}, want: errKeyCloned, after: keyRecord{Count: 3, CloneWarning: true}},
		{name: "same counter again", prior: 1,
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				k.counter = 1
				return k.get(t, waOrigin, f.assertion(t, ch, keys)), keys, ch
			}, want: errKeyCloned, after: keyRecord{Count: 1, CloneWarning: true}},
		{name: "counter 0 after counting", prior: 2,
			answer: func(t *testing.T, f *waFlow, k *softKey, keys []webauthnKey, ch []byte) ([]byte, []webauthnKey, []byte) {
				k.noCounter = true
				return k.get(t, waOrigin, f.assertion(t, ch, keys)), keys, ch
			}, want: errKeyCloned, after: keyRecord{Count: 2, CloneWarning: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newWAFlow(t, tc.uv)
			k := newSoftKey(t, waRPID)
			if tc.setup != nil {
				tc.setup(k)
			}
			_, key := f.enrol(t, k, "key")
			keys := []webauthnKey{key}
			var lastUsed int64
			for i := range tc.prior {
				if _, err := f.signIn(t, k, waOrigin, keys); err != nil {
					t.Fatalf("prior sign-in %d: %v", i+1, err)
				}
				lastUsed = f.clock.Now().Unix()
			}
			ch := waChallenge(t)
			expires := f.expires()
			body, signInKeys, verifyCh := tc.answer(t, f, k, keys, ch)
			name, err := f.rp.verifyAssertion(context.Background(), verifyCh, f.handle, signInKeys, expires, body, f.counts)
			if !errors.Is(err, tc.want) || name != "" {
				t.Fatalf("%q, %v; want %v", name, err, tc.want)
			}
			if tc.want == errCeremonyExpired && !errors.Is(err, errAssertion) {
				t.Errorf("%v does not wrap errAssertion", err)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("%q does not give go-webauthn's reason %q", err, tc.reason)
			}
			for _, s := range secret(key, ch) {
				if strings.Contains(err.Error(), s) {
					t.Errorf("%q shows a key or the challenge", err)
				}
			}
			if tc.after.Count > 0 || tc.after.CloneWarning {
				tc.after.LastUsed = lastUsed
			}
			if rec := f.status(t, key); rec != tc.after {
				t.Errorf("record %+v, want %+v", rec, tc.after)
			}
			if tc.want != errKeyCloned {
				return
			}
			// Sticky: the key is refused from then on, whatever it counts.
			k.counter, k.noCounter = 1000, false
			if _, err := f.signIn(t, k, waOrigin, keys); !errors.Is(err, errKeyCloned) {
				t.Errorf("a good assertion after the clone warning: %v, want errKeyCloned", err)
			}
		})
	}
}

// withExtensionResults is body with clientExtensionResults set to results.
func withExtensionResults(t *testing.T, body []byte, results string) []byte {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	m["clientExtensionResults"] = json.RawMessage(results)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Some clients (password managers, platforms) add extension outputs nobody
// asked for; nothing here relies on any, so they do not refuse the key.
func TestWebAuthnIgnoresUnaskedExtensionOutputs(t *testing.T) {
	f := newWAFlow(t, "")
	k := newSoftKey(t, waRPID)
	ch := waChallenge(t)
	body := withExtensionResults(t, k.create(t, waOrigin, f.creation(t, ch, nil)), `{"credProps":{"rk":true}}`)
	c, err := f.rp.verifyCreation(ch, f.handle, f.expires(), body, "key", nil)
	if err != nil {
		t.Fatalf("enrolment: %v", err)
	}
	key, err := newWebAuthnKey(c)
	if err != nil {
		t.Fatal(err)
	}
	keys := []webauthnKey{key}
	ch = waChallenge(t)
	body = withExtensionResults(t, k.get(t, waOrigin, f.assertion(t, ch, keys)), `{"credProps":{"rk":true},"largeBlob":{"supported":true}}`)
	if _, err := f.rp.verifyAssertion(context.Background(), ch, f.handle, keys, f.expires(), body, f.counts); err != nil {
		t.Fatalf("sign-in: %v", err)
	}
}

func TestWebAuthnReplayedAssertion(t *testing.T) {
	t.Run("counting key: the counter catches it, and the key stays refused", func(t *testing.T) {
		f := newWAFlow(t, "")
		k := newSoftKey(t, waRPID)
		_, key := f.enrol(t, k, "key")
		keys := []webauthnKey{key}
		ch := waChallenge(t)
		body := k.get(t, waOrigin, f.assertion(t, ch, keys))
		if _, err := f.rp.verifyAssertion(context.Background(), ch, f.handle, keys, f.expires(), body, f.counts); err != nil {
			t.Fatal(err)
		}
		if _, err := f.rp.verifyAssertion(context.Background(), ch, f.handle, keys, f.expires(), body, f.counts); !errors.Is(err, errKeyCloned) {
			t.Fatalf("replay: %v, want errKeyCloned", err)
		}
		if _, err := f.signIn(t, k, waOrigin, keys); !errors.Is(err, errKeyCloned) {
			t.Fatalf("the next good assertion: %v, want errKeyCloned", err)
		}
		if rec := f.status(t, key); !rec.CloneWarning || rec.Count != 1 {
			t.Errorf("record %+v", rec)
		}
	})
	t.Run("key that never counts: only the one-time challenge stops it", func(t *testing.T) {
		f := newWAFlow(t, "")
		k := newSoftKey(t, waRPID)
		k.noCounter = true
		_, key := f.enrol(t, k, "key")
		keys := []webauthnKey{key}
		ch := waChallenge(t)
		body := k.get(t, waOrigin, f.assertion(t, ch, keys))
		for i := range 2 { // the caller consumes the challenge; this shows why it must
			if _, err := f.rp.verifyAssertion(context.Background(), ch, f.handle, keys, f.expires(), body, f.counts); err != nil {
				t.Fatalf("use %d: %v", i+1, err)
			}
		}
		if _, err := f.rp.verifyAssertion(context.Background(), waChallenge(t), f.handle, keys, f.expires(), body, f.counts); !errors.Is(err, errAssertion) {
			t.Fatalf("with the next challenge: %v, want errAssertion", err)
		}
	})
}

func TestWebAuthnEnrolmentRefuses(t *testing.T) {
	f := newWAFlow(t, protocol.VerificationRequired)
	prior := newSoftKey(t, waRPID)
	_, priorKey := f.enrol(t, prior, "prior")
	known := func(id []byte) bool { return bytes.Equal(id, priorKey.id) }
	for _, tc := range []struct {
		name    string
		key     *softKey
		change  func(k *softKey)
		origin  string
		other   bool // the page's options had another challenge
		late    bool
		keyName string
		want    error
		reason  string
	}{
		{name: "a key already enrolled (excluded, but made again)", key: prior, want: errKeyKnown},
		{name: "another origin", origin: "http://localhost:9999", want: errRegistration, reason: "Error validating origin"},
		{name: "another RP ID", change: func(k *softKey) { k.rpID = "example.com" }, want: errRegistration, reason: "RP Hash mismatch"},
		{name: "a challenge other than the one given", other: true, want: errRegistration, reason: "Error validating challenge"},
		{name: "UV clear, UV required", change: func(k *softKey) { k.uv = false }, want: errRegistration, reason: "User verification required"},
		{name: "BS without BE", change: func(k *softKey) { k.bs = true }, want: errRegistration, reason: "Backup State Flag"},
		{name: "expired ceremony", late: true, want: errCeremonyExpired},
		{name: "no name", keyName: "   ", want: errKeyName, reason: "required"},
		{name: "a name over two lines", keyName: "safe A\nsafe B", want: errKeyName, reason: "control character"},
		{name: "a name with a tab", keyName: "safe\tA", want: errKeyName, reason: "control character"},
		{name: "a name with a bidi override", keyName: "safe \u202eA", want: errKeyName, reason: "control character"},
		{name: "a name with a backslash", keyName: `C:\safe`, want: errKeyName, reason: "backslash"},
		{name: "a name with an environment variable", keyName: "key {$HOME}", want: errKeyName, reason: "{$"},
		{name: "a name of 65 characters", keyName: strings.Repeat("é", 65), want: errKeyName, reason: "65 characters; at most 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := tc.key
			if k == nil {
				k = newSoftKey(t, waRPID)
			}
			if tc.change != nil {
				tc.change(k)
			}
			origin := tc.origin
			if origin == "" {
				origin = waOrigin
			}
			ch := waChallenge(t)
			pageCh := ch
			if tc.other {
				pageCh = waChallenge(t)
			}
			expires := f.expires()
			body := k.create(t, origin, f.creation(t, pageCh, []webauthnKey{priorKey}))
			if tc.late {
				f.clock.Advance(3 * time.Minute)
			}
			name := tc.keyName
			if name == "" {
				name = "new key"
			}
			c, err := f.rp.verifyCreation(ch, f.handle, expires, body, name, known)
			if !errors.Is(err, tc.want) || c != (WebAuthnKeyConfig{}) {
				t.Fatalf("%+v, %v; want %v", c, err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("%q does not say %q", err, tc.reason)
			}
		})
	}
	t.Run("a name of 64 characters", func(t *testing.T) {
		name := strings.Repeat("é", 63) + "!"
		if c, _ := f.enrol(t, newSoftKey(t, waRPID), name); c.Name != name {
			t.Errorf("name %q", c.Name)
		}
	})
}

// jsonNulls lists the paths of the null members in v (the options'
// JSON): Chromium's parse*OptionsFromJSON() refuses a null where it takes a
// dictionary or a sequence.
func jsonNulls(path string, v any) []string {
	var out []string
	switch v := v.(type) {
	case nil:
		out = append(out, path)
	case map[string]any:
		for k, e := range v {
			out = append(out, jsonNulls(path+"."+k, e)...)
		}
	case []any:
		for i, e := range v {
			out = append(out, jsonNulls(fmt.Sprintf("%s[%d]", path, i), e)...)
		}
	}
	return out
}

func decodeOptions(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if nulls := jsonNulls("publicKey", m); len(nulls) > 0 {
		t.Errorf("null members %v in %s", nulls, b)
	}
	return m
}

func TestWebAuthnOptionsJSON(t *testing.T) {
	f := newWAFlow(t, protocol.VerificationRequired)
	_, k1 := f.enrol(t, newSoftKey(t, waRPID), "one")
	_, k2 := f.enrol(t, newSoftKey(t, waRPID), "two")
	ch := waChallenge(t)
	ids := []any{
		map[string]any{"type": "public-key", "id": b64url.EncodeToString(k1.id)},
		map[string]any{"type": "public-key", "id": b64url.EncodeToString(k2.id)},
	}

	t.Run("request", func(t *testing.T) {
		b, err := f.rp.assertionOptions(ch, []webauthnKey{k1, k2}, 90*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		got := decodeOptions(t, b)
		want := map[string]any{
			"challenge":        b64url.EncodeToString(ch),
			"timeout":          float64(90000),
			"rpId":             waRPID,
			"allowCredentials": ids,
			"userVerification": "required",
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("options\n%s\nwant\n%v", b, want)
		}
	})
	t.Run("creation", func(t *testing.T) {
		b, err := f.rp.creationOptions(ch, f.handle, "alice@example.com", []webauthnKey{k1, k2}, 5*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		got := decodeOptions(t, b)
		alg := func(a float64) any { return map[string]any{"type": "public-key", "alg": a} }
		want := map[string]any{
			"rp":                 map[string]any{"id": waRPID, "name": "break glass"},
			"user":               map[string]any{"id": b64url.EncodeToString(f.handle), "name": "alice@example.com", "displayName": "alice@example.com"},
			"challenge":          b64url.EncodeToString(ch),
			"pubKeyCredParams":   []any{alg(-7), alg(-8), alg(-257)},
			"timeout":            float64(300000),
			"excludeCredentials": ids,
			"authenticatorSelection": map[string]any{
				"residentKey": "discouraged", "userVerification": "required"},
			"attestation": "none",
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("options\n%s\nwant\n%v", b, want)
		}
		// A first key: no excludeCredentials at all, rather than [] or null.
		b, err = f.rp.creationOptions(ch, f.handle, "alice@example.com", nil, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if m := decodeOptions(t, b); m["excludeCredentials"] != nil {
			t.Errorf("excludeCredentials %v with no keys", m["excludeCredentials"])
		}
	})
	t.Run("refused", func(t *testing.T) {
		if _, err := f.rp.assertionOptions(ch, nil, time.Minute); err == nil {
			t.Error("request options with no keys")
		}
		if _, err := f.rp.assertionOptions(ch[:15], []webauthnKey{k1}, time.Minute); err == nil {
			t.Error("request options with a 15-byte challenge")
		}
		if _, err := f.rp.assertionOptions(ch, []webauthnKey{k1}, 0); err == nil {
			t.Error("request options with no timeout")
		}
		if _, err := f.rp.creationOptions(ch[:15], f.handle, "a@example.com", nil, time.Minute); err == nil {
			t.Error("creation options with a 15-byte challenge")
		}
		if _, err := f.rp.creationOptions(ch, nil, "a@example.com", nil, time.Minute); err == nil {
			t.Error("creation options with no user handle")
		}
	})
}

// waConfig is a valid config for k.
func waConfig(t *testing.T, k *softKey, name string) WebAuthnKeyConfig {
	t.Helper()
	f := newWAFlow(t, "")
	c, _ := f.enrol(t, k, name)
	return c
}

func TestWebAuthnKeyConfigRefusals(t *testing.T) {
	good := waConfig(t, newSoftKey(t, waRPID), "good")
	with := func(change func(c *WebAuthnKeyConfig)) WebAuthnKeyConfig {
		c := good
		change(&c)
		return c
	}
	pk, _ := b64url.DecodeString(good.PublicKey)
	truncated := b64url.EncodeToString(pk[:len(pk)-8])
	for _, tc := range []struct {
		name string
		c    WebAuthnKeyConfig
		want string
	}{
		{"no name", with(func(c *WebAuthnKeyConfig) { c.Name = "" }), "webauthn_key: name: required"},
		{"name with spaces around", with(func(c *WebAuthnKeyConfig) { c.Name = " A " }), `webauthn_key " A ": name: starts or ends with a space`},
		{"name with a newline", with(func(c *WebAuthnKeyConfig) { c.Name = "A\nB" }), `name: contains the control character U+000A`},
		{"name with %", with(func(c *WebAuthnKeyConfig) { c.Name, c.ID = "100% safe", "" }), `webauthn_key "100% safe": id: required`},
		{"no ID", with(func(c *WebAuthnKeyConfig) { c.ID = "" }), `webauthn_key "good": id: required`},
		{"ID with padding", with(func(c *WebAuthnKeyConfig) { c.ID = "AAAA" + "AA==" }), `id: not base64url without padding`},
		{"ID in standard base64", with(func(c *WebAuthnKeyConfig) { c.ID = "ab+/" }), `id: not base64url without padding`},
		{"ID of 1024 bytes", with(func(c *WebAuthnKeyConfig) { c.ID = b64url.EncodeToString(make([]byte, 1024)) }), `id: 1024 bytes; a credential ID has at most 1023`},
		{"no public key", with(func(c *WebAuthnKeyConfig) { c.PublicKey = "" }), `webauthn_key "good": public_key: required`},
		{"public key not base64url", with(func(c *WebAuthnKeyConfig) { c.PublicKey = good.PublicKey + "!" }), `public_key: not base64url without padding`},
		{"public key truncated", with(func(c *WebAuthnKeyConfig) { c.PublicKey = truncated }), `public_key: not a COSE public key`},
		{"public key of random bytes", with(func(c *WebAuthnKeyConfig) { c.PublicKey = b64url.EncodeToString(bytes.Repeat([]byte{0xa5}, 77)) }), `public_key: not a COSE public key`},
		{"public key with its point off the curve", with(func(c *WebAuthnKeyConfig) {
			pk, _ := b64url.DecodeString(good.PublicKey)
			pk[len(pk)-1] ^= 1 // the last byte of y
			c.PublicKey = b64url.EncodeToString(pk)
		}), `public_key: not a COSE public key`},
		{"AAGUID not a UUID", with(func(c *WebAuthnKeyConfig) { c.AAGUID = "cb69481e8ff7403993ec0a2729a154a8" }), `aaguid: "cb69481e8ff7403993ec0a2729a154a8": not a UUID`},
		{"AAGUID with a non-hex digit", with(func(c *WebAuthnKeyConfig) { c.AAGUID = "cb69481e-8ff7-4039-93ec-0a2729a154ag" }), `not a UUID`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newWebAuthnKey(tc.c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
			for _, pk := range []string{good.PublicKey, truncated, tc.c.PublicKey} {
				if pk != "" && strings.Contains(err.Error(), pk) {
					t.Errorf("%q shows the public key", err)
				}
			}
		})
	}
	t.Run("upper-case AAGUID", func(t *testing.T) {
		k, err := newWebAuthnKey(with(func(c *WebAuthnKeyConfig) { c.AAGUID = "CB69481E-8FF7-4039-93EC-0A2729A154A8" }))
		if err != nil || k.aaguid != "cb69481e-8ff7-4039-93ec-0a2729a154a8" {
			t.Errorf("%q, %v", k.aaguid, err)
		}
	})
	t.Run("an account's keys", func(t *testing.T) {
		other := waConfig(t, newSoftKey(t, waRPID), "other")
		for _, tc := range []struct {
			name string
			cs   []WebAuthnKeyConfig
			want string
		}{
			{"unnamed, by position", []WebAuthnKeyConfig{good, with(func(c *WebAuthnKeyConfig) { c.Name = "" })}, "webauthn_key #2: name: required"},
			{"a name twice", []WebAuthnKeyConfig{good, with(func(c *WebAuthnKeyConfig) { c.ID = other.ID; c.PublicKey = other.PublicKey })}, `webauthn_key "good": the name is used twice`},
			{"a credential twice", []WebAuthnKeyConfig{good, with(func(c *WebAuthnKeyConfig) { c.Name = "again" })}, `webauthn_key "again": the same credential as "good"`},
		} {
			if _, err := newWebAuthnKeys(tc.cs); err == nil || err.Error() != tc.want {
				t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
			}
		}
		keys, err := newWebAuthnKeys([]WebAuthnKeyConfig{good, other})
		if err != nil || len(keys) != 2 || keys[1].name != "other" {
			t.Errorf("%v, %v", keys, err)
		}
	})
}

func TestWebAuthnKeyConfigPrintersRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		be   bool
		line string // the printed line, %s for id and public key
	}{
		{name: "YubiKey", line: `webauthn_key "YubiKey" %s %s aaguid cb69481e-8ff7-4039-93ec-0a2729a154a8`},
		{name: `YubiKey "A" in safe #2`, line: `webauthn_key "YubiKey \"A\" in safe #2" %s %s aaguid cb69481e-8ff7-4039-93ec-0a2729a154a8`},
		{name: `"quoted"`, be: true, line: `webauthn_key "\"quoted\"" %s %s aaguid cb69481e-8ff7-4039-93ec-0a2729a154a8 backup_eligible`},
		{name: "Schlüssel { im } Safe `B` <<EOF", line: "webauthn_key \"Schlüssel { im } Safe `B` <<EOF\" %s %s aaguid cb69481e-8ff7-4039-93ec-0a2729a154a8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newSoftKey(t, waRPID)
			k.be = tc.be
			k.aaguid = [16]byte{0xcb, 0x69, 0x48, 0x1e, 0x8f, 0xf7, 0x40, 0x39, 0x93, 0xec, 0x0a, 0x27, 0x29, 0xa1, 0x54, 0xa8}
			c := waConfig(t, k, tc.name)
			line := c.caddyfileLine()
			if want := fmt.Sprintf(tc.line, c.ID, c.PublicKey); line != want {
				t.Errorf("line\n%s\nwant\n%s", line, want)
			}

			d := caddyfile.NewTestDispenser("account alice@example.com {\n\t" + line + "\n\thash x\n}")
			d.Next()
			d.NextArg()
			var parsed WebAuthnKeyConfig
			for nest := d.Nesting(); d.NextBlock(nest); {
				if d.Val() != "webauthn_key" {
					continue
				}
				var err error
				if parsed, err = unmarshalWebAuthnKey(d); err != nil {
					t.Fatal(err)
				}
			}
			if parsed != c {
				t.Fatalf("parsed %+v, want %+v", parsed, c)
			}

			j, err := json.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			var fromJSON WebAuthnKeyConfig
			if err := json.Unmarshal(j, &fromJSON); err != nil || fromJSON != c {
				t.Fatalf("JSON %s: %+v, %v", j, fromJSON, err)
			}

			// The pasted line signs in.
			key, err := newWebAuthnKey(parsed)
			if err != nil {
				t.Fatal(err)
			}
			f := newWAFlow(t, "")
			if name, err := f.signIn(t, k, waOrigin, []webauthnKey{key}); err != nil || name != tc.name {
				t.Fatalf("sign-in with the pasted key: %q, %v", name, err)
			}
		})
	}
	t.Run("JSON", func(t *testing.T) {
		j, _ := json.Marshal(WebAuthnKeyConfig{Name: "a", ID: "b", PublicKey: "c"})
		if string(j) != `{"name":"a","id":"b","public_key":"c"}` {
			t.Errorf("%s", j)
		}
		j, _ = json.Marshal(WebAuthnKeyConfig{Name: "a", ID: "b", PublicKey: "c", AAGUID: "d", BackupEligible: true})
		if string(j) != `{"name":"a","id":"b","public_key":"c","aaguid":"d","backup_eligible":true}` {
			t.Errorf("%s", j)
		}
	})
	t.Run("refused lines", func(t *testing.T) {
		for _, tc := range []struct{ line, want string }{
			{`webauthn_key "a" id`, `needs "<name>" <id> <public_key>`},
			{`webauthn_key "a" id pk aaguid`, `aaguid takes one UUID, once`},
			{`webauthn_key "a" id pk aaguid x aaguid y`, `aaguid takes one UUID, once`},
			{`webauthn_key "a" id pk backup_eligible backup_eligible`, `backup_eligible given twice`},
			{`webauthn_key "a" id pk synced`, `unknown option "synced" (aaguid, backup_eligible)`},
		} {
			d := caddyfile.NewTestDispenser(tc.line)
			d.Next()
			if _, err := unmarshalWebAuthnKey(d); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want %q", tc.line, err, tc.want)
			}
		}
	})
}

func TestWebAuthnStorageSignCountsSurviveARestart(t *testing.T) {
	dir := t.TempDir()
	f := newWAFlow(t, "")
	f.counts = newStorageSignCounts(&certmagic.FileStorage{Path: dir})
	k := newSoftKey(t, waRPID)
	_, key := f.enrol(t, k, "key")
	keys := []webauthnKey{key}
	for range 3 {
		if _, err := f.signIn(t, k, waOrigin, keys); err != nil {
			t.Fatal(err)
		}
	}
	usedAt := f.clock.Now().Unix()

	// The record is named by a hash of the credential ID, not the ID.
	sum := sha256.Sum256(k.credID)
	path := filepath.Join(dir, filepath.FromSlash(storagePrefix+"webauthn/"+hex.EncodeToString(sum[:])))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != fmt.Sprintf(`{"count":3,"last_used":%d}`, usedAt) {
		t.Errorf("record %s", b)
	}

	restart := func() { f.counts = newStorageSignCounts(&certmagic.FileStorage{Path: dir}) }
	restart()
	if rec := f.status(t, key); rec != (keyRecord{Count: 3, LastUsed: usedAt}) {
		t.Fatalf("after a restart: %+v", rec)
	}
	k.counter = 2
	if _, err := f.signIn(t, k, waOrigin, keys); !errors.Is(err, errKeyCloned) {
		t.Fatalf("lowered counter after a restart: %v", err)
	}
	restart()
	k.counter = 100
	if _, err := f.signIn(t, k, waOrigin, keys); !errors.Is(err, errKeyCloned) {
		t.Fatalf("after another restart: %v, want the clone warning kept", err)
	}
	if rec := f.status(t, key); rec != (keyRecord{Count: 3, CloneWarning: true, LastUsed: usedAt}) {
		t.Errorf("record %+v", rec)
	}

	t.Run("an unreadable record fails closed", func(t *testing.T) {
		if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := f.signIn(t, k, waOrigin, keys)
		if err == nil || errors.Is(err, errAssertion) || errors.Is(err, errKeyCloned) || !strings.Contains(err.Error(), "loading its sign count") {
			t.Errorf("%v", err)
		}
		if _, err := keyStatus(context.Background(), f.counts, key); err == nil {
			t.Error("keyStatus read it")
		}
	})
}

func TestWebAuthnUserHandle(t *testing.T) {
	h := webauthnUserHandle("alice@example.com")
	// A changed handle locks out every passkey (they return it): this value
	// must never change.
	if got := hex.EncodeToString(h); got != waUserHandleAlice {
		t.Errorf("handle %s, want %s", got, waUserHandleAlice)
	}
	if !bytes.Equal(webauthnUserHandle(" Alice@Example.COM "), h) {
		t.Error("not normalised")
	}
	if bytes.Equal(webauthnUserHandle("bob@example.com"), h) {
		t.Error("two accounts share a handle")
	}
	plain := sha256.Sum256([]byte("alice@example.com"))
	if bytes.Equal(plain[:], h) {
		t.Error("the handle is the email's bare hash")
	}
}

const waUserHandleAlice = "8498206e209c0d6593f1aee385fac4860d7d8d5b6fb39a3bc7463010ff114523"

func TestNewRelyingParty(t *testing.T) {
	for _, tc := range []struct {
		id      string
		origins []string
		uv      protocol.UserVerificationRequirement
		want    string // "" for accepted
	}{
		{"example.com", []string{"https://example.com", "https://login.example.com:8443"}, "required", ""},
		{"localhost", []string{"http://localhost:8080", "https://localhost"}, "", ""},
		{"", []string{"https://example.com"}, "", "rp_id: required"},
		{"127.0.0.1", []string{"http://127.0.0.1"}, "", "an IP address cannot be"},
		{"::1", []string{"http://[::1]"}, "", "an IP address cannot be"},
		{"Example.com", []string{"https://example.com"}, "", "lower-case domain name"},
		{"example.com:443", []string{"https://example.com"}, "", "lower-case domain name"},
		{"https://example.com", []string{"https://example.com"}, "", "lower-case domain name"},
		{"example.com", nil, "", "origins: at least one"},
		{"example.com", []string{"example.com"}, "", "must be scheme://host[:port]"},
		{"example.com", []string{"https://example.com/"}, "", "with no path"},
		{"example.com", []string{"https://example.com/login"}, "", "with no path"},
		{"example.com", []string{"https://example.com?x"}, "", "with no path"},
		{"example.com", []string{"ftp://example.com"}, "", "must be scheme://host[:port]"},
		{"example.com", []string{"https://example.org"}, "", "not example.com or a subdomain"},
		{"example.com", []string{"https://badexample.com"}, "", "not example.com or a subdomain"},
		{"example.com", []string{"http://example.com"}, "", "must be https"},
		{"example.com", []string{"https://EXAMPLE.com"}, "", "lower case"},
		{"example.com", []string{"https://example.com"}, "always", `user_verification: "always"`},
	} {
		rp, err := newRelyingParty(tc.id, tc.origins, tc.uv, "")
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q %v: %v", tc.id, tc.origins, err)
		case tc.want == "" && (rp.displayName != tc.id || rp.uv == ""):
			t.Errorf("%q: display name %q, uv %q", tc.id, rp.displayName, rp.uv)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q %v %q: %v, want %q", tc.id, tc.origins, tc.uv, err, tc.want)
		}
	}
}
