// The SMTP transport (through go-mail) used for codes and alert emails.

package breakglass

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	netmail "net/mail"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/wneessen/go-mail"
)

// defaultSMTPTimeout bounds one whole SMTP delivery when no timeout is set.
const defaultSMTPTimeout = 10 * time.Second

// SMTPConfig is how mail leaves: the code mail and the alert emails. Set on
// the app it is the default for every handler; set on a handler it replaces
// the app's for that handler.
type SMTPConfig struct {
	// The SMTP server, as host:port. Required.
	Address string `json:"address,omitempty"`

	// The user name for SMTP AUTH (PLAIN). AUTH is used only when this is
	// set. Placeholders such as {env.*} and {file.*} are resolved at load.
	Username string `json:"username,omitempty"`

	// The password for SMTP AUTH. Placeholders are resolved at load; prefer
	// {env.*} or {file.*} to writing it in the config.
	Password string `json:"password,omitempty"`

	// How the connection is protected: "starttls" (default; STARTTLS is
	// required, the delivery fails without it), "implicit" (TLS from the first
	// byte, usually port 465) or "none" (plain text, for a local relay only:
	// AUTH over plain text is refused except to localhost).
	TLS string `json:"tls,omitempty"`

	// The sender, e.g. "Break Glass <breakglass@example.com>". Required.
	// Placeholders are resolved at load.
	From string `json:"from,omitempty"`

	// A PEM file of CA certificates to trust for the server's certificate,
	// instead of the system roots (for a private CA or a self-signed server).
	CAFile string `json:"ca_file,omitempty"`

	// Accept any server certificate. For tests only: it removes the protection
	// TLS gives the codes and the SMTP password.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`

	// The time one delivery may take, connection to QUIT. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// mailer is a provisioned SMTPConfig.
type mailer struct {
	host, username, password string
	port                     int
	policy                   string
	from                     *netmail.Address
	tlsConfig                *tls.Config
	timeout                  time.Duration
}

// provision resolves placeholders and checks every field; field names in
// errors are prefixed with where, e.g. "smtp".
func (c *SMTPConfig) provision(repl *caddy.Replacer, where string) (*mailer, error) {
	host, portStr, err := net.SplitHostPort(c.Address)
	if err != nil || host == "" {
		return nil, fmt.Errorf("%s: address %q: must be host:port", where, c.Address)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return nil, fmt.Errorf("%s: address %q: bad port", where, c.Address)
	}
	m := &mailer{host: host, port: port, timeout: time.Duration(c.Timeout)}
	if m.timeout < 0 {
		return nil, fmt.Errorf("%s: timeout: must be positive", where)
	}
	if m.timeout == 0 {
		m.timeout = defaultSMTPTimeout
	}
	switch c.TLS {
	case "", "starttls":
		m.policy = "starttls"
	case "implicit", "none":
		m.policy = c.TLS
	default:
		return nil, fmt.Errorf("%s: tls %q: must be starttls, implicit or none", where, c.TLS)
	}
	if m.username, err = resolve(repl, c.Username); err != nil {
		return nil, fmt.Errorf("%s: username: %v", where, err)
	}
	if m.password, err = resolve(repl, c.Password); err != nil {
		return nil, fmt.Errorf("%s: password: %v", where, err)
	}
	from, err := resolve(repl, c.From)
	if err != nil {
		return nil, fmt.Errorf("%s: from: %v", where, err)
	}
	if from == "" {
		return nil, fmt.Errorf("%s: from: required", where)
	}
	if m.from, err = netmail.ParseAddress(from); err != nil {
		return nil, fmt.Errorf("%s: from %q: not an email address: %v", where, from, err)
	}
	m.tlsConfig = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.InsecureSkipVerify} //nolint:gosec // opt-in, documented as test-only
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%s: ca_file: %v", where, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: ca_file %q: no PEM certificates in it", where, c.CAFile)
		}
		m.tlsConfig.RootCAs = pool
	}
	return m, nil
}

// resolve replaces {env.*}, {file.*} and other global placeholders. An empty
// result of a placeholder is an error: a secret that did not arrive must not
// become an empty secret.
func resolve(repl *caddy.Replacer, s string) (string, error) {
	out, err := repl.ReplaceOrErr(s, true, false)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// mailMessage is one mail to one recipient.
type mailMessage struct {
	to      string
	subject string
	text    string
	html    string
}

// send delivers msg. It returns when the server accepted the message, failed,
// the timeout passed or ctx ended; an ended ctx closes the connection at once.
func (m *mailer) send(ctx context.Context, msg mailMessage) error {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()

	em := mail.NewMsg()
	em.FromMailAddress(m.from)
	if err := em.To(msg.to); err != nil {
		return fmt.Errorf("recipient %q: %w", msg.to, err)
	}
	em.Subject(msg.subject)
	em.SetDate()
	em.SetMessageID()
	em.SetGenHeader(mail.HeaderXMailer, "caddy break_glass")
	em.SetBodyString(mail.TypeTextPlain, msg.text)
	if msg.html != "" {
		em.AddAlternativeString(mail.TypeTextHTML, msg.html)
	}

	opts := []mail.Option{
		mail.WithPort(m.port),
		mail.WithTimeout(m.timeout),
		mail.WithTLSConfig(m.tlsConfig),
		mail.WithDialContextFunc(m.dialer(ctx)),
	}
	switch m.policy {
	case "starttls":
		opts = append(opts, mail.WithTLSPolicy(mail.TLSMandatory))
	case "implicit":
		opts = append(opts, mail.WithSSL(), mail.WithTLSPolicy(mail.TLSMandatory))
	case "none":
		opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
	}
	if m.username != "" {
		opts = append(opts, mail.WithSMTPAuth(mail.SMTPAuthPlain),
			mail.WithUsername(m.username), mail.WithPassword(m.password))
	} else {
		opts = append(opts, mail.WithSMTPAuth(mail.SMTPAuthNoAuth))
	}
	c, err := mail.NewClient(m.host, opts...)
	if err != nil {
		return err
	}
	return c.DialAndSendWithContext(ctx, em)
}

// dialer connects (with TLS from the first byte for "implicit") and ties the
// connection to ctx: go-mail uses the context only for the dial, so without
// this an app Stop would wait for a slow server's full timeout.
func (m *mailer) dialer(ctx context.Context) mail.DialContextFunc {
	return func(dialCtx context.Context, network, addr string) (net.Conn, error) {
		nd := &net.Dialer{}
		var conn net.Conn
		var err error
		if m.policy == "implicit" {
			conn, err = (&tls.Dialer{NetDialer: nd, Config: m.tlsConfig}).DialContext(dialCtx, network, addr)
		} else {
			conn, err = nd.DialContext(dialCtx, network, addr)
		}
		if err != nil {
			return nil, err
		}
		context.AfterFunc(ctx, func() { _ = conn.Close() })
		return conn, nil
	}
}
