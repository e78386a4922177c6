// go-webauthn v0.18.2 driven directly with a softKey: what it accepts, what it
// refuses, and what it only flags. The WebAuthn factor will build on exactly
// this behaviour (notes on issue 15, section 1.7); a library upgrade that
// changes it fails here first.

package breakglass

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

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
