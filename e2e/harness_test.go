//go:build e2e

// The end-to-end harness: one Caddy binary built with xcaddy per run, real
// processes (Caddy, mailpit) on free loopback ports, a webhook receiver,
// clients bound to distinct loopback source addresses, and process logs kept
// on failure.

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
)

// Versions the binary is built with.
const (
	caddyVersion  = "v2.11.9"
	pluginModule  = "github.com/caddy-break-glass/caddy-break-glass"
	testPassword  = "correct horse battery staple"
	breakGlassEnv = "BREAK_GLASS_CADDY" // a binary to use instead of building one
)

var (
	caddyBin  string // the xcaddy-built binary
	artifacts string // screenshots and the logs of failed tests
	hashOnce  sync.Once
	bcryptPW  string // bcrypt hash of testPassword, made by the binary
)

func TestMain(m *testing.M) {
	wd, _ := os.Getwd()
	artifacts = filepath.Join(wd, "artifacts")
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	caddyBin = os.Getenv(breakGlassEnv)
	if caddyBin == "" {
		var err error
		if caddyBin, err = buildCaddy(filepath.Dir(wd)); err != nil {
			fmt.Fprintln(os.Stderr, "building Caddy with xcaddy:", err)
			os.Exit(1)
		}
	}
	if abs, err := filepath.Abs(caddyBin); err == nil {
		caddyBin = abs
	}
	os.Exit(m.Run())
}

// buildCaddy builds Caddy with the plugin from the checkout at root, the way
// the README tells operators to.
func buildCaddy(root string) (string, error) {
	xcaddy, err := exec.LookPath("xcaddy")
	if err != nil {
		gopath, _ := exec.Command("go", "env", "GOPATH").Output()
		xcaddy = filepath.Join(strings.TrimSpace(string(gopath)), "bin", "xcaddy")
	}
	proxy, _ := exec.Command("go", "env", "GOPROXY").Output()
	first, _, _ := strings.Cut(strings.TrimSpace(string(proxy)), ",")
	out := filepath.Join(artifacts, "bin", "caddy")
	cmd := exec.Command(xcaddy, "build", caddyVersion, "--with", pluginModule+"="+root, "--output", out)
	cmd.Env = append(os.Environ(), "GOPROXY="+first+"|off")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	fmt.Fprintln(os.Stderr, "e2e: building", out, "with xcaddy")
	return out, cmd.Run()
}

// hash returns a bcrypt hash of testPassword made by `caddy hash-password`.
func hash(t *testing.T) string {
	hashOnce.Do(func() {
		out, err := exec.Command(caddyBin, "hash-password", "--algorithm", "bcrypt", "--bcrypt-cost", "10", "--plaintext", testPassword).Output()
		if err != nil {
			t.Fatalf("caddy hash-password: %v", err)
		}
		bcryptPW = strings.TrimSpace(string(out))
	})
	return bcryptPW
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func waitPort(t *testing.T, addr string, p *proc) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return
		}
		if p != nil && p.exited() {
			t.Fatalf("%s exited before listening on %s:\n%s", p.name, addr, p.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s", addr)
}

// within polls cond every 200 ms until it holds; the test fails with msg
// after d.
func within(t *testing.T, d time.Duration, msg string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
	}
}

// proc is a process the test started. Its output goes to a file, copied to
// artifacts/logs/<test>/ if the test fails; it is stopped when the test ends.
type proc struct {
	t       *testing.T
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
}

func startProc(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &proc{t: t, name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			dir := filepath.Join(artifacts, "logs", strings.ReplaceAll(t.Name(), "/", "_"))
			_ = os.MkdirAll(dir, 0o755)
			if b, err := os.ReadFile(logPath); err == nil {
				_ = os.WriteFile(filepath.Join(dir, name+".log"), b, 0o644)
				t.Logf("%s log kept in %s", name, filepath.Join(dir, name+".log"))
			}
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the process to end (SIGINT, as Ctrl-C) and kills it after 15 s.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) output() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// waitLog waits for a line of the process's JSON log (Caddy's) with this
// message and these field values, and returns it.
func (p *proc) waitLog(t *testing.T, msg string, fields map[string]string) map[string]any {
	t.Helper()
	return bgtest.WaitLog(t, p.logs, msg, fields)
}

func (p *proc) logs() bgtest.Logs { return bgtest.ReadLogFile(p.logPath) }

// caddy is a running Caddy.
type caddy struct {
	*proc
	port   int
	admin  string // host:port of the admin endpoint
	config string // path of the config file
	base   string // http://127.0.0.1:port
}

// startCaddy writes config (a Caddyfile, or JSON when adapter is "json") and
// runs the binary on it. {PORT} and {ADMIN} in config are replaced by free
// ports.
func startCaddy(t *testing.T, config, adapter string, env ...string) *caddy {
	t.Helper()
	c := &caddy{port: freePort(t)}
	c.admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c.base = fmt.Sprintf("http://127.0.0.1:%d", c.port)
	c.config = filepath.Join(t.TempDir(), "Caddyfile")
	if adapter == "json" {
		c.config = filepath.Join(t.TempDir(), "caddy.json")
	}
	c.write(t, config)
	args := []string{"run", "--config", c.config}
	if adapter != "json" {
		args = append(args, "--adapter", adapter)
	}
	c.proc = startProc(t, fmt.Sprintf("caddy-%d", c.port), append(env, "BG_HASH="+hash(t)), caddyBin, args...)
	waitPort(t, c.admin, c.proc)
	if strings.Contains(config, "{PORT}") {
		waitPort(t, fmt.Sprintf("127.0.0.1:%d", c.port), c.proc)
	}
	return c
}

func (c *caddy) expand(config string) string {
	return strings.NewReplacer("{PORT}", fmt.Sprint(c.port), "{ADMIN}", c.admin).Replace(config)
}

func (c *caddy) write(t *testing.T, config string) {
	t.Helper()
	if err := os.WriteFile(c.config, []byte(c.expand(config)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// load POSTs a JSON config to the admin API's /load.
func (c *caddy) load(t *testing.T, config string) {
	t.Helper()
	resp, err := http.Post("http://"+c.admin+"/load", "application/json", strings.NewReader(c.expand(config)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST /load: %d %s", resp.StatusCode, b)
	}
	waitPort(t, fmt.Sprintf("127.0.0.1:%d", c.port), c.proc)
}

// run runs the binary as a command (adapt, validate, reload…) and returns
// what it printed on both streams.
func run(args ...string) (string, error) {
	out, err := exec.Command(caddyBin, args...).CombinedOutput()
	return string(out), err
}

// stdout runs the binary and returns its standard output alone.
func stdout(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(caddyBin, args...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("caddy %v: %v\n%s", args, err, errb.String())
	}
	return string(out)
}

// mailpit is a running mailpit: SMTP for the plugin, its API for the test.
type mailpit struct {
	*proc
	smtp string // host:port
	api  string // http://host:port
}

type mailpitOptions struct {
	certFile, keyFile string // enable STARTTLS (and require it)
	authFile          string // require AUTH with these users
}

func startMailpit(t *testing.T, o mailpitOptions) *mailpit {
	t.Helper()
	bin, err := exec.LookPath("mailpit")
	if err != nil {
		gopath, _ := exec.Command("go", "env", "GOPATH").Output()
		bin = filepath.Join(strings.TrimSpace(string(gopath)), "bin", "mailpit")
	}
	m := &mailpit{smtp: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	api := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m.api = "http://" + api
	args := []string{"--smtp", m.smtp, "--listen", api, "--database", filepath.Join(t.TempDir(), "mailpit.db"),
		"--disable-version-check", "--smtp-disable-rdns"}
	if o.certFile != "" {
		args = append(args, "--smtp-tls-cert", o.certFile, "--smtp-tls-key", o.keyFile, "--smtp-require-starttls")
	}
	if o.authFile != "" {
		args = append(args, "--smtp-auth-file", o.authFile)
	} else {
		args = append(args, "--smtp-auth-accept-any", "--smtp-auth-allow-insecure")
	}
	m.proc = startProc(t, "mailpit", nil, bin, args...)
	waitPort(t, api, m.proc)
	waitPort(t, m.smtp, m.proc)
	return m
}

// mailMessage is a message from mailpit's API; in its list of messages, the
// Text and HTML are left empty.
type mailMessage struct {
	ID      string
	Subject string
	Text    string
	HTML    string
	To      []struct{ Address string }
	From    struct{ Address string }
}

func (m *mailpit) messages(t *testing.T) []mailMessage {
	var v struct{ Messages []mailMessage }
	m.get(t, "/api/v1/messages?limit=500", &v)
	return v.Messages
}

func (m *mailpit) message(t *testing.T, id string) mailMessage {
	var v mailMessage
	m.get(t, "/api/v1/message/"+id, &v)
	return v
}

// get decodes the JSON answer of mailpit's API at path into v.
func (m *mailpit) get(t *testing.T, path string, v any) {
	t.Helper()
	resp, err := http.Get(m.api + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// waitMail waits for a message to `to` whose subject contains subject and
// that is not in seen, and returns it whole.
func (m *mailpit) waitMail(t *testing.T, to, subject string, seen map[string]bool) mailMessage {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, s := range m.messages(t) {
			if seen[s.ID] || !strings.Contains(s.Subject, subject) {
				continue
			}
			for _, a := range s.To {
				if a.Address == to {
					if seen != nil {
						seen[s.ID] = true
					}
					return m.message(t, s.ID)
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no mail to %s about %q", to, subject)
	return mailMessage{}
}

var codeRE = regexp.MustCompile(`\b(\d{6})\b`)

// waitCode waits for the next code mail to ops@example.com and returns the code.
func (m *mailpit) waitCode(t *testing.T, seen map[string]bool) (string, mailMessage) {
	t.Helper()
	msg := m.waitMail(t, "ops@example.com", "one-time code", seen)
	c := codeRE.FindStringSubmatch(msg.Text)
	if c == nil {
		t.Fatalf("no code in the mail: %q", msg.Text)
	}
	return c[1], msg
}

// newClient is a browser whose connections come from ip, a loopback address.
func newClient(t *testing.T, base, ip string) *bgtest.Client {
	c := bgtest.New(t, bgtest.OverTCP(ip), base)
	c.Name = ip
	return c
}

// signIn runs the whole flow on /admin/ as ops@example.com, reading the
// code from mailpit.
func signIn(t *testing.T, c *bgtest.Client, mp *mailpit, seen map[string]bool) {
	t.Helper()
	r := c.SignIn("/admin/", "ops@example.com", testPassword, func() string { code, _ := mp.waitCode(t, seen); return code })
	if r.Status != http.StatusSeeOther {
		t.Fatalf("right code from %s: %d\n%s", c.Name, r.Status, r.Body)
	}
}
