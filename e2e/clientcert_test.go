//go:build e2e

// A client certificate as the second factor: Caddy verifies it (tls
// client_auth with a trust pool), the door accepts the one its account
// lists.

package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/chromedp/cdproto/security"
	"github.com/chromedp/chromedp"
)

// colonFingerprint writes a hex fingerprint as openssl x509 -fingerprint
// -sha256 prints it (upper case, colons), as an operator would paste it.
func colonFingerprint(fp string) string {
	var parts []string
	for i := 0; i < len(fp); i += 2 {
		parts = append(parts, strings.ToUpper(fp[i:i+2]))
	}
	return strings.Join(parts, ":")
}

// TestClientCertificateIsASecondFactorOnCaddy: on a site whose TLS policy
// verifies client certificates against the test's CA, the right password
// with the account's certificate signs in at once; without a certificate,
// or with another one of the same CA, the password alone is refused; a
// certificate of another CA never gets past the handshake. A browser with no
// certificate to give is told so on the "No second factor here" page.
func TestClientCertificateIsASecondFactorOnCaddy(t *testing.T) {
	dir := t.TempDir()
	ca := bgtest.NewCA(t, "break-glass e2e CA")
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	alice, aliceFP := ca.Client(t, pkix.Name{CommonName: "alice"})
	mallory, _ := ca.Client(t, pkix.Name{CommonName: "mallory"})
	stranger, _ := bgtest.NewCA(t, "another CA").Client(t, pkix.Name{CommonName: "alice"})
	storage := filepath.Join(dir, "storage")
	c := startCaddy(t, fmt.Sprintf(`{
	admin {ADMIN}
	skip_install_trust
	auto_https disable_redirects
	storage file_system %s
}

https://localhost:{PORT} {
	bind 127.0.0.1
	tls internal {
		client_auth {
			mode verify_if_given
			trust_pool file %s
		}
	}
	break_glass /admin* {
		account ops@example.com {
			hash {env.BG_HASH}
			second_factor client_cert
			client_cert %s
		}
	}
	respond /admin* "Admin area. Signed in as {http.auth.user.id}." 200
}
`, storage, caFile, colonFingerprint(aliceFP)), "caddyfile")
	base := fmt.Sprintf("https://localhost:%d", c.port)

	// Caddy's own CA signed the site's certificate: trust it, as a
	// browser of the team would.
	var roots *x509.CertPool
	within(t, 20*time.Second, "Caddy's local CA root", func() bool {
		b, err := os.ReadFile(filepath.Join(storage, "pki", "authorities", "local", "root.crt"))
		if err != nil {
			return false
		}
		roots = x509.NewCertPool()
		return roots.AppendCertsFromPEM(b)
	})
	client := func(cert *tls.Certificate) *bgtest.Client {
		tr := bgtest.OverTCP("127.0.0.1")
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, ServerName: "localhost"}
		if cert != nil {
			tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
		}
		return bgtest.New(t, tr, base)
	}

	// The site's certificate is issued in the background: wait for it.
	within(t, 20*time.Second, "the site's certificate", func() bool {
		tr := bgtest.OverTCP("127.0.0.1")
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, ServerName: "localhost"}
		resp, err := (&http.Client{Transport: tr}).Get(base + "/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})

	op := client(&alice)
	if r := op.Login("/admin/", "ops@example.com", testPassword, "INC-3 SSO down", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("password with the account's certificate: %d\n%s", r.Status, r.Body)
	}
	if r := op.Get("/admin/"); r.Status != http.StatusOK || !strings.Contains(r.Body, "Signed in as ops@example.com") {
		t.Fatalf("after the password with the certificate: %d %s", r.Status, r.Body)
	}
	c.waitLog(t, "break-glass login succeeded", map[string]string{"second_factor": "client_cert", "reason": "INC-3 SSO down"})

	for name, cert := range map[string]*tls.Certificate{
		"no certificate": nil, "another subject of the CA": &mallory, "a certificate of another CA": &stranger,
	} {
		cl := client(cert)
		r := cl.Login("/admin/", "ops@example.com", testPassword, "", nil)
		if r.Status != http.StatusUnauthorized || !strings.Contains(r.Body, "No second factor here") {
			t.Errorf("%s: %d\n%s", name, r.Status, r.Body)
		}
		if r := cl.Get("/admin/"); strings.Contains(r.Body, "Signed in as") {
			t.Errorf("%s: reached the admin area", name)
		}
	}
	c.waitLog(t, "break-glass login refused: the password is right but this request has no second factor the account accepts", nil)

	// A browser without a client certificate gets the page that says why.
	// Its profile does not trust Caddy's local CA: the site's certificate
	// is not what this checks.
	ctx := browser(t)
	if _, err := chromedp.Call(ctx, security.SetIgnoreCertificateErrors, security.SetIgnoreCertificateErrorsParams{Ignore: true}); err != nil {
		t.Fatalf("Security.setIgnoreCertificateErrors: %v", err)
	}
	browserStep(t, ctx, "the password in a browser without a certificate", chromedp.Navigate(base+"/admin/"),
		chromedp.WaitVisible(chromedp.CSS("#email")),
		chromedp.SendKeys(chromedp.CSS("#email"), "ops@example.com"),
		chromedp.SendKeys(chromedp.CSS("#password"), testPassword+"\n"),
		waitText("No second factor here"))
	if txt := bodyText(t, ctx); !strings.Contains(txt, "client certificate") || strings.Contains(txt, "Signed in as") {
		t.Errorf("the page of a request with no factor: %q", txt)
	}
	checkPage(t, ctx, "no-factor")
	attrsAre(t, ctx, ".alert.error", map[string]string{"role": "alert"})
}
