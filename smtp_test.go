// Tests of the SMTP transport against a real SMTP server: each TLS mode,
// AUTH, trust settings and failures.

package breakglass

import (
	"context"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// testMailer is cfg provisioned to send to addr as Break Glass
// <bg@example.com>.
func testMailer(t *testing.T, addr string, cfg SMTPConfig) *mailer {
	t.Helper()
	cfg.Address, cfg.From = addr, "Break Glass <bg@example.com>"
	m, err := cfg.provision(caddy.NewReplacer(), "smtp")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Each TLS mode delivers, with AUTH and the trust settings; what should be
// refused (no STARTTLS, an untrusted certificate, a wrong password) sends
// nothing and says why.
func TestSMTPDeliversInEachTLSModeAndRefusesWhatItShould(t *testing.T) {
	tlsCfg, caFile := selfSigned(t)
	for name, tc := range map[string]struct {
		srv     smtpOptions
		cfg     SMTPConfig
		wantTLS bool
		refused string // what the error is about, when nothing must be sent
	}{
		"starttls with auth and ca_file": {
			srv: smtpOptions{tls: tlsCfg, user: "mailer", pass: "s3cret"},
			cfg: SMTPConfig{TLS: "starttls", Username: "mailer", Password: "s3cret", CAFile: caFile}, wantTLS: true,
		},
		"implicit tls": {
			srv: smtpOptions{tls: tlsCfg, implicit: true, user: "mailer", pass: "s3cret"},
			cfg: SMTPConfig{TLS: "implicit", Username: "mailer", Password: "s3cret", CAFile: caFile}, wantTLS: true,
		},
		"insecure_skip_verify": {
			srv: smtpOptions{tls: tlsCfg},
			cfg: SMTPConfig{InsecureSkipVerify: true}, wantTLS: true,
		},
		"none to a local relay": {
			srv: smtpOptions{},
			cfg: SMTPConfig{TLS: "none"},
		},
		"starttls required but not offered": {srv: smtpOptions{}, cfg: SMTPConfig{}, refused: "STARTTLS"},
		"untrusted certificate":             {srv: smtpOptions{tls: tlsCfg}, cfg: SMTPConfig{}, refused: "certificate"},
		"wrong password": {
			srv: smtpOptions{tls: tlsCfg, user: "mailer", pass: "right"},
			cfg: SMTPConfig{InsecureSkipVerify: true, Username: "mailer", Password: "wrong"}, refused: "auth",
		},
	} {
		t.Run(name, func(t *testing.T) {
			srv := startSMTP(t, tc.srv)
			err := testMailer(t, srv.Addr, tc.cfg).send(context.Background(), mailMessage{to: "ops@example.com", subject: "hello", text: "body", html: "<p>body</p>"})
			got := srv.Mails()
			if tc.refused != "" {
				if err == nil || !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(tc.refused)) {
					t.Fatalf("err = %v, want one about %q", err, tc.refused)
				}
				if len(got) != 0 {
					t.Fatalf("%d mails got through", len(got))
				}
				if strings.Contains(err.Error(), "wrong") && tc.cfg.Password == "wrong" {
					t.Fatal("the error shows the password")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Fatalf("%d mails arrived", len(got))
			}
			g := got[0]
			if g.TLS != tc.wantTLS || g.User != tc.cfg.Username || g.From != "bg@example.com" ||
				g.Subject != "hello" || strings.TrimSpace(g.Text) != "body" || !strings.Contains(g.HTML, "<p>body</p>") {
				t.Fatalf("got %+v", g)
			}
		})
	}
}

func TestSMTPConfigErrorsNameTheField(t *testing.T) {
	t.Setenv("BG_EMPTY", "")
	for _, tc := range []struct {
		cfg  SMTPConfig
		want string
	}{
		{SMTPConfig{Address: "mail.example.com", From: "a@example.com"}, "smtp: address"},
		{SMTPConfig{Address: "mail.example.com:99999", From: "a@example.com"}, "smtp: address"},
		{SMTPConfig{Address: "mail.example.com:25"}, "smtp: from: required"},
		{SMTPConfig{Address: "mail.example.com:25", From: "not an address"}, "smtp: from"},
		{SMTPConfig{Address: "mail.example.com:25", From: "a@example.com", TLS: "maybe"}, "smtp: tls"},
		{SMTPConfig{Address: "mail.example.com:25", From: "a@example.com", Password: "{env.BG_EMPTY}"}, "smtp: password"},
		{SMTPConfig{Address: "mail.example.com:25", From: "a@example.com", CAFile: "/nonexistent.pem"}, "smtp: ca_file"},
		{SMTPConfig{Address: "mail.example.com:25", From: "a@example.com", Timeout: -1}, "smtp: timeout"},
	} {
		_, err := tc.cfg.provision(caddy.NewReplacer(), "smtp")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

func TestSMTPPlaceholdersAreResolved(t *testing.T) {
	t.Setenv("BG_SMTP_USER", "mailer")
	t.Setenv("BG_SMTP_PASS", "s3cret")
	t.Setenv("BG_FROM", "Break Glass <bg@example.com>")
	m, err := (&SMTPConfig{Address: "mail.example.com:587", Username: "{env.BG_SMTP_USER}",
		Password: "{env.BG_SMTP_PASS}", From: "{env.BG_FROM}"}).provision(caddy.NewReplacer(), "smtp")
	if err != nil {
		t.Fatal(err)
	}
	if m.username != "mailer" || m.password != "s3cret" || m.from.Address != "bg@example.com" || m.from.Name != "Break Glass" {
		t.Fatalf("got %+v", m)
	}
}
