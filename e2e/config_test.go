//go:build e2e

// The configurations the scenarios run: an operator's Caddyfile with two
// guarded paths, its JSON twin for the admin API, and test certificates.

package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type site struct {
	maxAttempts int
	lockout     string
	smtp        string // the smtp block's address and inner lines
	smtpInner   string
	webhook     string
	allowed     string
	servers     string // a `servers { … }` global block
}

func defaultSite(mp *mailpit) site {
	return site{maxAttempts: 3, lockout: "15m", smtp: mp.smtp, smtpInner: "tls none", allowed: "127.0.0.1 127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.5"}
}

// caddyfile is an operator's Caddyfile: /admin* guarded for the allowed
// clients, /restricted* guarded for a network no test client is in.
func (s site) caddyfile() string {
	webhook := ""
	if s.webhook != "" {
		webhook = "alert_webhook " + s.webhook
	}
	return fmt.Sprintf(`{
	admin {ADMIN}
	%s
	break_glass {
		max_attempts %d
		lockout %s
		code_ttl 10m
		session_ttl 1h
		smtp %s {
			%s
			from "Break Glass <breakglass@example.com>"
		}
	}
}

:{PORT} {
	bind 127.0.0.1
	break_glass /admin* {
		email ops@example.com
		hash {env.BG_HASH}
		allowed_ips %s
		alert_emails sec@example.com soc@example.com
		%s
	}
	break_glass /restricted* {
		email ops@example.com
		hash {env.BG_HASH}
		allowed_ips 192.0.2.0/24
	}
	respond /admin* "Admin area. Signed in as {http.auth.user.id} (break-glass: {http.auth.user.break_glass}) since {http.auth.user.authenticated_at}." 200
	respond /restricted* "restricted" 200
	respond "public page" 200
}
`, s.servers, s.maxAttempts, s.lockout, s.smtp, s.smtpInner, s.allowed, webhook)
}

// json is the same site as JSON, for POST /load.
func (s site) json() string {
	webhook := ""
	if s.webhook != "" {
		webhook = fmt.Sprintf(`, "alert_webhook": %q`, s.webhook)
	}
	allowed := `"` + strings.Join(strings.Fields(s.allowed), `", "`) + `"`
	return fmt.Sprintf(`{
	"admin": {"listen": "{ADMIN}"},
	"apps": {
		"break_glass": {
			"max_attempts": %d, "lockout": %q, "code_ttl": "10m", "session_ttl": "1h",
			"smtp": {"address": %q, "tls": "none", "from": "Break Glass <breakglass@example.com>"}
		},
		"http": {"servers": {"main": {
			"listen": ["127.0.0.1:{PORT}"],
			"routes": [
				{"match": [{"path": ["/admin*"]}], "handle": [
					{"handler": "break_glass", "email": "ops@example.com", "hash": "{env.BG_HASH}",
					 "allowed_ips": [%s], "alert_emails": ["sec@example.com", "soc@example.com"]%s},
					{"handler": "static_response", "body": "Admin area. Signed in as {http.auth.user.id}"}
				]},
				{"handle": [{"handler": "static_response", "body": "public page"}]}
			]
		}}}
	}
}`, s.maxAttempts, s.lockout, s.smtp, allowed, webhook)
}

// selfSigned writes a certificate and key for 127.0.0.1 and localhost.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "break_glass e2e SMTP"},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "smtp.crt"), filepath.Join(dir, "smtp.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// tlsMailpit starts mailpit with STARTTLS required and AUTH for mailer/s3cret,
// and returns the smtp block lines that reach it.
func tlsMailpit(t *testing.T) (*mailpit, string) {
	cert, key := selfSigned(t)
	auth := filepath.Join(t.TempDir(), "smtp-users")
	if err := os.WriteFile(auth, []byte("mailer:s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mp := startMailpit(t, mailpitOptions{certFile: cert, keyFile: key, authFile: auth})
	inner := fmt.Sprintf("tls starttls\n\t\t\tca_file %s\n\t\t\tusername mailer\n\t\t\tpassword {env.BG_SMTP_PASSWORD}", cert)
	return mp, inner
}
