// A real SMTP server for tests (emersion/go-smtp on a loopback port) that
// keeps what it receives, and a self-signed certificate for its TLS.

package breakglass

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// receivedMail is one message as the server got it.
type receivedMail struct {
	From    string
	To      []string
	Subject string
	Text    string // the text/plain part, decoded
	HTML    string // the text/html part, decoded
	TLS     bool   // whether the session was encrypted
	User    string // the AUTH user, if any
	Raw     []byte // the message as the client wrote it
}

type testSMTP struct {
	Addr string

	mu         sync.Mutex
	mails      []receivedMail
	rejectRcpt map[string]bool
	delay      time.Duration
	arrived    chan struct{}

	user, pass string
	srv        *smtp.Server
	stop       chan struct{}
	stopOnce   sync.Once
}

// Close stops the server, ending any delayed DATA at once.
func (s *testSMTP) Close() {
	s.stopOnce.Do(func() { close(s.stop) })
	_ = s.srv.Close()
}

type smtpOptions struct {
	tls        *tls.Config // enables STARTTLS
	implicit   bool        // TLS from the first byte instead of STARTTLS
	user, pass string      // requires AUTH PLAIN with these
	rejectRcpt []string    // recipients refused at RCPT
	delay      time.Duration
	longLines  bool // no line limit of the server's own: the test judges the lines
}

func startSMTP(t *testing.T, o smtpOptions) *testSMTP {
	t.Helper()
	s := &testSMTP{rejectRcpt: map[string]bool{}, delay: o.delay, user: o.user, pass: o.pass, arrived: make(chan struct{}, 100), stop: make(chan struct{})}
	for _, r := range o.rejectRcpt {
		s.rejectRcpt[r] = true
	}
	srv := smtp.NewServer(s)
	srv.Domain = "localhost"
	srv.ReadTimeout = 30 * time.Second
	srv.WriteTimeout = 30 * time.Second
	srv.MaxMessageBytes = 1 << 20
	if o.longLines {
		srv.MaxLineLength = 0
	}
	srv.AllowInsecureAuth = o.tls == nil
	srv.TLSConfig = o.tls
	var ln net.Listener
	var err error
	if o.implicit {
		ln, err = tls.Listen("tcp", "127.0.0.1:0", o.tls)
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = ln.Addr().String()
	s.srv = srv
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(s.Close)
	return s
}

// Mails returns a copy of what has arrived.
func (s *testSMTP) Mails() []receivedMail {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]receivedMail(nil), s.mails...)
}

// waitMail waits for a mail, after the first skip ones, to `to` whose
// subject holds subject, and returns it.
func (s *testSMTP) waitMail(t *testing.T, skip int, to, subject string) receivedMail {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		for _, m := range s.Mails()[min(skip, len(s.Mails())):] {
			if len(m.To) == 1 && m.To[0] == to && strings.Contains(m.Subject, subject) {
				return m
			}
		}
		select {
		case <-s.arrived:
		case <-deadline:
			t.Fatalf("no mail to %s about %q", to, subject)
		}
	}
}

// waitMails waits until n mails have arrived and returns them.
func (s *testSMTP) waitMails(t *testing.T, n int) []receivedMail {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		if m := s.Mails(); len(m) >= n {
			return m
		}
		select {
		case <-s.arrived:
		case <-deadline:
			t.Fatalf("waited for %d mails, got %d", n, len(s.Mails()))
		}
	}
}

func (s *testSMTP) NewSession(c *smtp.Conn) (smtp.Session, error) {
	_, isTLS := c.TLSConnectionState()
	return &smtpSession{srv: s, tls: isTLS}, nil
}

type smtpSession struct {
	srv  *testSMTP
	tls  bool
	user string
	from string
	to   []string
}

func (ss *smtpSession) AuthMechanisms() []string {
	if ss.srv.user == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *smtpSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != ss.srv.user || pass != ss.srv.pass {
			return errors.New("invalid credentials")
		}
		ss.user = user
		return nil
	}), nil
}

func (ss *smtpSession) Mail(from string, _ *smtp.MailOptions) error {
	if ss.srv.user != "" && ss.user == "" {
		return smtp.ErrAuthRequired
	}
	ss.from = from
	return nil
}

func (ss *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.srv.mu.Lock()
	reject := ss.srv.rejectRcpt[to]
	ss.srv.mu.Unlock()
	if reject {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *smtpSession) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if ss.srv.delay > 0 {
		select {
		case <-time.After(ss.srv.delay):
		case <-ss.srv.stop:
			return errors.New("server stopping")
		}
	}
	m := receivedMail{From: ss.from, To: ss.to, TLS: ss.tls, User: ss.user, Raw: raw}
	if err := parseMail(raw, &m); err != nil {
		return err
	}
	ss.srv.mu.Lock()
	ss.srv.mails = append(ss.srv.mails, m)
	ss.srv.mu.Unlock()
	select {
	case ss.srv.arrived <- struct{}{}:
	default:
	}
	return nil
}

func (ss *smtpSession) Reset()        { ss.from, ss.to = "", nil }
func (ss *smtpSession) Logout() error { return nil }

// parseMail reads the subject and the decoded text and HTML parts.
func parseMail(raw []byte, m *receivedMail) error {
	msg, err := mail.ReadMessage(strings.NewReader(string(raw)))
	if err != nil {
		return err
	}
	m.Subject, _ = new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject"))
	return readPart(msg.Header.Get("Content-Type"), msg.Header.Get("Content-Transfer-Encoding"), msg.Body, m)
}

func readPart(ctype, enc string, body io.Reader, m *receivedMail) error {
	mt, params, err := mime.ParseMediaType(ctype)
	if err != nil {
		return err
	}
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if err := readPart(p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), p, m); err != nil {
				return err
			}
		}
	}
	if strings.EqualFold(enc, "quoted-printable") {
		body = quotedprintable.NewReader(body)
	}
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	switch mt {
	case "text/plain":
		m.Text = string(b)
	case "text/html":
		m.HTML = string(b)
	}
	return nil
}

// selfSigned makes a certificate for 127.0.0.1 and localhost, and writes it
// as a PEM file that a client can trust (ca_file).
func selfSigned(t *testing.T) (*tls.Config, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "break_glass test SMTP"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pemPath := filepath.Join(t.TempDir(), "smtp-ca.pem")
	if err := os.WriteFile(pemPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, pemPath
}
