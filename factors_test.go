package breakglass

import (
	"crypto/tls"
	"crypto/x509/pkix"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestSecondFactorListsAreCheckedAgainstWhatTheAccountHas(t *testing.T) {
	all := factorEmail | factorTOTP | factorWebAuthn | factorClientCert
	for _, tc := range []struct {
		list       []string
		configured factor
		want       factor
		err        string
	}{
		{nil, factorEmail, factorEmail | factorWebAuthn, ""}, // a first key can be enrolled
		{nil, all, all, ""},
		{[]string{"webauthn", "email"}, factorEmail, factorWebAuthn | factorEmail, ""}, // enrolling the first key
		{[]string{"webauthn"}, factorEmail, 0, "needs a webauthn_key"},
		{[]string{"webauthn"}, factorEmail | factorWebAuthn, factorWebAuthn, ""},
		{[]string{"totp"}, factorEmail, 0, "needs a totp_secret"},
		{[]string{"client_cert"}, factorEmail, 0, "needs a client_cert"},
		{[]string{"client_cert"}, factorEmail | factorClientCert, factorClientCert, ""},
		{[]string{"sms"}, all, 0, `"sms": must be`},
	} {
		got, err := factorsOf(tc.list, tc.configured)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v of %v: error %v, want %q", tc.list, tc.configured, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%v of %v: %v, %v; want %v", tc.list, tc.configured, got, err, tc.want)
		}
	}
}

func TestFactorOptionsInTheCaddyfile(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`break_glass {
		account alice@example.com {
			hash x
			second_factor client_cert email
			client_cert AB:CD 0011
			client_cert_subject "CN=alice,O=Example Corp"
		}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	c := h.Accounts[0]
	if strings.Join(c.SecondFactor, " ") != "client_cert email" || strings.Join(c.ClientCerts, " ") != "AB:CD 0011" ||
		len(c.ClientCertSubjects) != 1 || c.ClientCertSubjects[0] != "CN=alice,O=Example Corp" {
		t.Errorf("account: %+v", c)
	}
	for input, msg := range map[string]string{
		`break_glass { second_factor webauthn }`:                                  "goes in an account block",
		"break_glass { account a@example.com {\nhash x\nsecond_factor\n} }":       "second_factor: needs at least one value",
		"break_glass { account a@example.com {\nhash x\nclient_cert\n} }":         "client_cert: needs at least one value",
		"break_glass { account a@example.com {\nhash x\nclient_cert_subject\n} }": "client_cert_subject",
	} {
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: error %v, want %q", input, err, msg)
		}
	}
}

func TestBadFactorConfigIsRefusedAtLoadNamingTheAccount(t *testing.T) {
	for _, tc := range []struct {
		mod func(*AccountConfig)
		msg string
	}{
		{func(c *AccountConfig) { c.ClientCerts = []string{"not hex"} }, `account ops@example.com: client_cert "not hex": not a SHA-256 fingerprint`},
		{func(c *AccountConfig) { c.ClientCerts = []string{strings.Repeat("ab", 31)} }, "not a SHA-256 fingerprint"},
		{func(c *AccountConfig) { c.ClientCertSubjects = []string{"CN=a\nO=b"} }, "client_cert_subject: empty, or a control character"},
		// As openssl prints them: Go prints these attributes as OIDs.
		{func(c *AccountConfig) { c.ClientCertSubjects = []string{"emailAddress=alice@example.com,CN=alice"} },
			`account ops@example.com: client_cert_subject "emailAddress=alice@example.com,CN=alice": "emailAddress" is not an attribute Go names`},
		{func(c *AccountConfig) { c.ClientCertSubjects = []string{"CN=alice,DC=example,DC=com"} }, `"DC" is not an attribute Go names`},
		{func(c *AccountConfig) { c.ClientCertSubjects = []string{"UID=alice,O=Example"} }, "list the certificate's SHA-256 fingerprint (client_cert) instead"},
		{func(c *AccountConfig) { c.ClientCertSubjects = []string{"serialNumber=42,CN=alice"} }, `"serialNumber" is not an attribute Go names`},
		{func(c *AccountConfig) { c.ClientCertSubjects = []string{"CN=alice,O=Example, Inc."} }, `" Inc." is not TYPE=value`},
		{func(c *AccountConfig) { c.SecondFactor = []string{"client_cert"} }, "account ops@example.com: second_factor client_cert: needs"},
	} {
		cfg := AccountConfig{Email: "ops@example.com", Hash: testHash(t, 4)}
		tc.mod(&cfg)
		h := &Handler{Accounts: []AccountConfig{cfg}}
		app := testApp(t)
		err := h.setup(app, zapNop())
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("error %v, want %q", err, tc.msg)
		}
	}
}

// certSite serves h over real TLS on 127.0.0.1 with Go's client
// certificate handling set to mode; a client made with client presents
// cert (if any).
func certSite(t *testing.T, h testHandler, ca *bgtest.CA, mode tls.ClientAuthType) func(cert *tls.Certificate) *bgtest.Client {
	srv := httptest.NewUnstartedServer(h.asHTTP(t))
	srv.TLS = &tls.Config{ClientAuth: mode, ClientCAs: ca.Pool()}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return func(cert *tls.Certificate) *bgtest.Client {
		tr := srv.Client().Transport.(*http.Transport).Clone()
		tr.DisableKeepAlives = true
		if cert != nil {
			tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
		}
		return bgtest.New(t, tr, srv.URL)
	}
}

// TestAVerifiedClientCertificateIsTheSecondFactor: over real TLS, the right
// password with a certificate the account accepts (by fingerprint, or by
// subject) signs in at once, and no code is mailed; a certificate of
// another subject, one that was sent but not verified, or none at all
// never counts: the account that only takes certificates refuses them as
// failed attempts, and one that also takes email falls back to the code.
func TestAVerifiedClientCertificateIsTheSecondFactor(t *testing.T) {
	ca := bgtest.NewCA(t, "break-glass test CA")
	alice, aliceFP := ca.Client(t, pkix.Name{CommonName: "alice", Organization: []string{"Example Corp"}})
	bob, _ := ca.Client(t, pkix.Name{CommonName: "bob", Organization: []string{"Example Corp"}})
	for _, by := range []string{"fingerprint", "subject"} {
		t.Run(by, func(t *testing.T) {
			h := newTestHandler(t, &App{MaxAttempts: 5}, func(h *Handler) {
				h.Email, h.Hash = "", ""
				acc := AccountConfig{Email: "ops@example.com", Hash: testHash(t, 4), SecondFactor: []string{"client_cert"}}
				if by == "fingerprint" {
					acc.ClientCerts = []string{strings.ToUpper(aliceFP[:2]) + ":" + aliceFP[2:]}
				} else {
					acc.ClientCertSubjects = []string{"CN=alice,O=Example Corp"}
				}
				h.Accounts = []AccountConfig{acc}
				h.AllowedIPs = nil // loopback
			})
			site := certSite(t, h, ca, tls.VerifyClientCertIfGiven)
			c := site(&alice)
			if r := c.Login("/admin/", "ops@example.com", testPassword, "INC-7", nil); r.Status != http.StatusSeeOther {
				t.Fatalf("password with alice's certificate: %d %s", r.Status, r.Body)
			}
			if r := c.Get("/admin/"); r.Status != http.StatusOK || r.Header.Get("X-Upstream") != "reached" {
				t.Fatalf("after the password with a certificate: %d", r.Status)
			}
			if h.logs.Logs().Find("break-glass login succeeded", map[string]string{"second_factor": "client_cert", "reason": "INC-7"}) == nil {
				t.Error("no login line naming the client_cert factor")
			}
			if n := len(h.logs.Logs().All("break-glass code (dev_log_code)")); n != 0 {
				t.Errorf("%d codes were made for a certificate sign-in", n)
			}
			// Another subject of the same CA, and no certificate: the
			// password alone is a failed attempt.
			for i, cert := range []*tls.Certificate{&bob, nil} {
				c := site(cert)
				r := c.Login("/admin/", "ops@example.com", testPassword, "", nil)
				if r.Status != http.StatusUnauthorized || !strings.Contains(r.Body, "No second factor here") {
					t.Fatalf("case %d: %d %s", i, r.Status, r.Body)
				}
				if r := c.Get("/admin/"); r.Header.Get("X-Upstream") != "" {
					t.Fatalf("case %d reached the upstream", i)
				}
			}
			if rem := h.state.limiter.remaining(limiterKey(netip.MustParseAddr("127.0.0.1")), h.app.lim); rem != 3 {
				t.Errorf("attempts left after two refused passwords: %d, want 3", rem)
			}
		})
	}

	// A certificate the client sent but Caddy did not verify (no trust
	// pool: Go's RequestClientCert) is no factor: an account that also
	// takes email gets the code page.
	h := newTestHandler(t, nil, func(h *Handler) {
		h.Email, h.Hash = "", ""
		h.Accounts = []AccountConfig{{Email: "ops@example.com", Hash: testHash(t, 4), ClientCerts: []string{aliceFP}}}
		h.AllowedIPs = nil
	})
	if h.accounts[0].factors != factorEmail|factorClientCert|factorWebAuthn {
		t.Fatalf("default factors with a fingerprint: %v", h.accounts[0].factors)
	}
	c := certSite(t, h, ca, tls.RequestClientCert)(&alice)
	if r := c.Login("/admin/", "ops@example.com", testPassword, "", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("password: %d", r.Status)
	}
	if r := c.Get("/admin/"); !strings.Contains(r.Body, `name="code"`) {
		t.Fatalf("an unverified certificate did not fall back to the code: %d %s", r.Status, r.Body)
	}
	if r := c.SubmitCode("/admin/", devCode(t, h)); r.Status != http.StatusSeeOther {
		t.Fatalf("code: %d", r.Status)
	}
	if h.logs.Logs().Find("break-glass login succeeded", map[string]string{"second_factor": "email"}) == nil {
		t.Error("no login line naming the email factor")
	}
}

// TestClientCertSubjectsAreComparedAsGoPrintsThem: over real TLS, a
// client_cert_subject matches the subject as Go prints it (the README's
// form): its attributes in Go's order, several values of one joined by
// "+", a comma in a value escaped; the same attributes in another order do
// not match.
func TestClientCertSubjectsAreComparedAsGoPrintsThem(t *testing.T) {
	ca := bgtest.NewCA(t, "break-glass test CA")
	for _, tc := range []struct {
		name    string
		cert    pkix.Name
		subject string
		match   bool
	}{
		{"CN and O", pkix.Name{CommonName: "alice", Organization: []string{"Example Corp"}}, "CN=alice,O=Example Corp", true},
		{"every attribute Go names", pkix.Name{SerialNumber: "42", CommonName: "alice", OrganizationalUnit: []string{"Ops"},
			Organization: []string{"Example Corp"}, PostalCode: []string{"10115"}, StreetAddress: []string{"Main St 1"},
			Locality: []string{"Berlin"}, Province: []string{"BE"}, Country: []string{"DE"}},
			"SERIALNUMBER=42,CN=alice,OU=Ops,O=Example Corp,POSTALCODE=10115,STREET=Main St 1,L=Berlin,ST=BE,C=DE", true},
		{"two values of one attribute", pkix.Name{CommonName: "alice", OrganizationalUnit: []string{"Ops", "Sec"}}, "CN=alice,OU=Ops+OU=Sec", true},
		{"a comma in a value", pkix.Name{CommonName: "alice", Organization: []string{"Example, Inc."}}, `CN=alice,O=Example\, Inc.`, true},
		{"another order", pkix.Name{CommonName: "alice", Organization: []string{"Example Corp"}}, "O=Example Corp,CN=alice", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHandler(t, nil, func(h *Handler) {
				h.Email, h.Hash, h.AllowedIPs = "", "", nil
				h.Accounts = []AccountConfig{{Email: "ops@example.com", Hash: testHash(t, 4), SecondFactor: []string{"client_cert"},
					ClientCertSubjects: []string{tc.subject}}}
			})
			cert, _ := ca.Client(t, tc.cert)
			r := certSite(t, h, ca, tls.VerifyClientCertIfGiven)(&cert).Login("/admin/", "ops@example.com", testPassword, "", nil)
			if got := r.Status == http.StatusSeeOther; got != tc.match {
				t.Errorf("%q against the subject %q: status %d, want a match: %v", tc.subject, tc.cert.String(), r.Status, tc.match)
			}
		})
	}
}

// TestAnAccountWithoutEmailIsNeverMailedACode: with second_factor totp the
// right password makes no code (no mail, nothing in the dev log), the page
// asks for the authenticator's code, and that code signs in.
func TestAnAccountWithoutEmailIsNeverMailedACode(t *testing.T) {
	sec, err := newTOTPSecret()
	if err != nil {
		t.Fatal(err)
	}
	h := newTestHandler(t, nil, func(h *Handler) {
		h.Email, h.Hash = "", ""
		h.Accounts = []AccountConfig{{Email: "ops@example.com", Hash: testHash(t, 4), TOTPSecret: sec, SecondFactor: []string{"totp"}}}
	})
	c := h.client(t, "192.0.2.7")
	if r := c.Login("/admin/", "ops@example.com", testPassword, "", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("password: %d", r.Status)
	}
	if n := len(h.logs.Logs().All("break-glass code (dev_log_code)")); n != 0 {
		t.Fatalf("a code was made for a TOTP-only account (%d in the log)", n)
	}
	if h.logs.Logs().Find("break-glass password accepted: waiting for the second factor (no code mailed)", map[string]string{"email": "ops@example.com"}) == nil {
		t.Error("no log line of the pending second factor")
	}
	if r := c.Get("/admin/"); !strings.Contains(r.Body, `name="code"`) {
		t.Fatalf("no code form: %s", r.Body)
	}
	key, _ := decodeTOTPSecret(sec)
	if r := c.SubmitCode("/admin/", hotp(key, uint64(totpStep(now())), totpDigits)); r.Status != http.StatusSeeOther {
		t.Fatalf("TOTP code: %d %s", r.Status, r.Body)
	}
	if h.logs.Logs().Find("break-glass login succeeded", map[string]string{"second_factor": "totp"}) == nil {
		t.Error("no login line naming the totp factor")
	}
}

// TestAnAccountWithoutEmailNeedsNoMailTransport: smtp is asked for only
// when an account takes codes by email.
func TestAnAccountWithoutEmailNeedsNoMailTransport(t *testing.T) {
	for factors, wantErr := range map[string]bool{"client_cert": false, "client_cert email": true} {
		h := &Handler{Accounts: []AccountConfig{{Email: "ops@example.com", Hash: testHash(t, 4),
			SecondFactor: strings.Fields(factors), ClientCerts: []string{strings.Repeat("ab", 32)}}}}
		err := h.setup(testApp(t), zapNop())
		if (err != nil) != wantErr || (err != nil && !strings.Contains(err.Error(), "no way to deliver the code")) {
			t.Errorf("second_factor %s without smtp: %v", factors, err)
		}
	}
}
