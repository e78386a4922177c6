// The tamper-evident audit log (audit_log): one JSON line per event, each
// carrying the SHA-256 of the line before ("prev") and of its own content
// ("hash"), so that an edited, removed or reordered line breaks the chain
// at that line. `caddy break-glass verify-audit` checks a file.

package breakglass

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// auditGenesis is the "prev" of a file's first line.
var auditGenesis = strings.Repeat("0", 64)

// auditRecord is one line of the audit log, before its hash is added. The
// field order is fixed, which keeps the bytes hashed stable.
type auditRecord struct {
	Time   string `json:"time"`
	Event  string `json:"event"`
	Email  string `json:"email,omitempty"`
	Client string `json:"client,omitempty"`
	Reason string `json:"reason,omitempty"`
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	Status int    `json:"status,omitempty"`
	Detail string `json:"detail,omitempty"`
	Prev   string `json:"prev"`
}

// Audit events.
const (
	auditCodeIssued = "code_issued"
	auditLogin      = "login"
	auditLockout    = "lockout"
	auditLogout     = "logout"
	auditRequest    = "request"
	auditRefused    = "login_refused"
	auditSpent      = "credential_spent"
	auditUnlock     = "admin_unlock"
	auditRevoke     = "admin_revoke"
	auditPending    = "login_pending"
	auditRecovered  = "recovered"
	auditContinued  = "chain_continued"
)

// auditLog appends to one file. Every handler (and every config, across
// reloads) naming the same file shares one auditLog, so that the chain has
// one writer.
type auditLog struct {
	path string
	mu   sync.Mutex
	f    *os.File
	head string // SHA-256 of the last line
}

var auditPool = caddy.NewUsagePool()

// openAuditLog opens (or shares) the audit log at p. The caller releases it
// with closeAuditLog. A file that was moved aside (rotated) since it was
// opened is replaced by a new one at p, whose first line names the chain
// head of the one before.
func openAuditLog(p string) (*auditLog, string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, "", err
	}
	v, loaded, err := auditPool.LoadOrNew(abs, func() (caddy.Destructor, error) { return newAuditLog(abs) })
	if err != nil {
		return nil, "", err
	}
	a := v.(*auditLog)
	if loaded {
		if err := a.reopenIfMoved(); err != nil {
			_, _ = auditPool.Delete(abs)
			return nil, "", err
		}
	}
	return a, abs, nil
}

func closeAuditLog(abs string) error {
	_, err := auditPool.Delete(abs)
	return err
}

// newAuditLog opens the file for appending and finds the chain head: the
// hash of its last line. A last line cut short (a crash mid-write) is ended
// and followed by a "recovered" line, so that the chain goes on from it.
func newAuditLog(path string) (*auditLog, error) {
	f, head, err := openAuditFile(path)
	if err != nil {
		return nil, err
	}
	return &auditLog{path: path, f: f, head: head}, nil
}

func openAuditFile(path string) (*os.File, string, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, "", err
	}
	head := auditGenesis
	rd := bufio.NewReader(f)
	var last []byte
	for {
		line, err := rd.ReadBytes('\n')
		if len(line) > 0 {
			last = line
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			f.Close()
			return nil, "", err
		}
	}
	if len(last) == 0 {
		return f, head, nil
	}
	if last[len(last)-1] == '\n' {
		return f, lineHash(last[:len(last)-1]), nil
	}
	head = lineHash(last)
	if _, err := f.Write([]byte{'\n'}); err != nil {
		f.Close()
		return nil, "", err
	}
	a := &auditLog{path: path, f: f, head: head}
	if head, err = a.write(auditRecord{Event: auditRecovered, Detail: "the line before was cut short (a crash while writing it); the chain goes on from its hash"}); err != nil {
		f.Close()
		return nil, "", err
	}
	return f, head, nil
}

// reopenIfMoved starts a new file when the one at the path is no longer the
// one open (it was moved aside or deleted).
func (a *auditLog) reopenIfMoved() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	held, err := a.f.Stat()
	if err != nil {
		return err
	}
	if cur, err := os.Stat(a.path); err == nil && os.SameFile(held, cur) {
		return nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, head, err := openAuditFile(a.path)
	if err != nil {
		return err
	}
	old, oldHead := a.f, a.head
	a.f, a.head = f, head
	_ = old.Close()
	if head == auditGenesis && oldHead != auditGenesis {
		_, err = a.writeLocked(auditRecord{Event: auditContinued, Detail: "the file before this one (moved aside) ended with the chain head " + oldHead})
	}
	return err
}

func lineHash(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}

// Destruct closes the file once no config uses it.
func (a *auditLog) Destruct() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.f.Close()
}

// write appends rec and returns the new chain head.
func (a *auditLog) write(rec auditRecord) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.writeLocked(rec)
}

func (a *auditLog) writeLocked(rec auditRecord) (string, error) {
	if rec.Time == "" {
		rec.Time = now().UTC().Format(time.RFC3339Nano)
	}
	rec.Prev = a.head
	body, err := json.Marshal(rec)
	if err != nil {
		return a.head, err
	}
	sum := sha256.Sum256(body)
	line := make([]byte, 0, len(body)+80)
	line = append(line, body[:len(body)-1]...)
	line = append(line, `,"hash":"`...)
	line = hex.AppendEncode(line, sum[:])
	line = append(line, `"}`...)
	if _, err := a.f.Write(append(line, '\n')); err != nil {
		return a.head, err
	}
	a.head = lineHash(line)
	return a.head, nil
}

// currentHead is the hash of the last line written.
func (a *auditLog) currentHead() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.head
}

// audit writes rec to the handler's audit log, if it has one, and returns
// the chain head ("" without an audit log). A failure is logged at ERROR.
func (h *Handler) audit(rec auditRecord) string {
	if h.auditLog == nil {
		return ""
	}
	if rec.Email == "" {
		rec.Email = h.email
	}
	head, err := h.auditLog.write(rec)
	if err != nil {
		h.logger.Error("break-glass: writing the audit log", zap.String("audit_log", h.auditPath), zap.String("event", rec.Event), zap.Error(err))
	}
	return head
}

// errAuditFormat is a line that is not an audit record.
var errAuditFormat = errors.New("not an audit line")

// auditReport is what verifyAudit found in a whole file.
type auditReport struct {
	Lines     int            `json:"lines"`
	Head      string         `json:"head"`
	Recovered []int          `json:"recovered,omitempty"` // lines cut short by a crash, and recovered
	Found     map[string]int `json:"found,omitempty"`     // the heads looked for: the line whose hash each is
}

// verifyAudit checks a whole audit log: each line's hash against its
// content, and its prev against the line before. A line cut short by a
// crash passes only when the writer recovered from it (the next line is
// "recovered" and chains from it). It also notes at which line each of
// heads (chain heads kept elsewhere, such as an alert's audit_head) is. It
// returns an error naming the first broken line.
func verifyAudit(r io.Reader, heads ...string) (auditReport, error) {
	rep := auditReport{Head: auditGenesis, Found: map[string]int{}}
	want := map[string]bool{}
	for _, h := range heads {
		want[h] = true
	}
	rd := bufio.NewReader(r)
	readLine := func() ([]byte, bool, error) {
		line, err := rd.ReadBytes('\n')
		if len(line) == 0 && err == io.EOF {
			return nil, false, io.EOF
		}
		if err != nil && err != io.EOF {
			return nil, false, err
		}
		whole := line[len(line)-1] == '\n'
		if whole {
			line = line[:len(line)-1]
		}
		return line, whole, nil
	}
	line, whole, err := readLine()
	for err == nil {
		rep.Lines++
		n := rep.Lines
		next, nextWhole, nextErr := readLine()
		bad := checkAuditLine(line, rep.Head)
		if !whole {
			bad = errors.New("cut short (no end of line)")
		}
		if bad != nil {
			if nextErr != nil || !nextWhole || !recovers(next, line) {
				return rep, fmt.Errorf("line %d: %w", n, bad)
			}
			rep.Recovered = append(rep.Recovered, n)
		}
		rep.Head = lineHash(line)
		if want[rep.Head] {
			rep.Found[rep.Head] = n
		}
		line, whole, err = next, nextWhole, nextErr
	}
	if err != io.EOF {
		return rep, err
	}
	return rep, nil
}

// recovers reports whether next is a valid "recovered" line chaining from
// the (broken) line before it.
func recovers(next, broken []byte) bool {
	if checkAuditLine(next, lineHash(broken)) != nil {
		return false
	}
	var rec auditRecord
	return json.Unmarshal(next, &rec) == nil && rec.Event == auditRecovered
}

func checkAuditLine(line []byte, prev string) error {
	const tail = `"}`
	i := bytes.LastIndex(line, []byte(`,"hash":"`))
	if i < 0 || !bytes.HasSuffix(line, []byte(tail)) || len(line)-i != len(`,"hash":"`)+64+len(tail) {
		return errAuditFormat
	}
	want := string(line[i+len(`,"hash":"`) : len(line)-len(tail)])
	body := append(append([]byte(nil), line[:i]...), '}')
	if lineHash(body) != want {
		return errors.New("its content does not match its hash (the line was changed)")
	}
	var rec auditRecord
	if err := json.Unmarshal(body, &rec); err != nil {
		return errAuditFormat
	}
	if rec.Prev != prev {
		return errors.New("its prev is not the hash of the line before (a line was removed, added or moved)")
	}
	return nil
}

// statusRecorder notes the status of a response made under a session, for
// the audit log.
type statusRecorder struct {
	*caddyhttp.ResponseWriterWrapper
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		s.status = code
	}
	s.ResponseWriterWrapper.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriterWrapper.Write(b)
}

// serveAudited passes a signed-in request on and writes it to the audit log
// with its status.
func (h *Handler) serveAudited(w http.ResponseWriter, r *http.Request, client string, next caddyhttp.Handler) error {
	rec := &statusRecorder{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	path := originalURL(r).Path
	err := next.ServeHTTP(rec, r)
	status := rec.status
	if err != nil {
		var he caddyhttp.HandlerError
		if errors.As(err, &he) && he.StatusCode != 0 {
			status = he.StatusCode
		} else {
			status = http.StatusInternalServerError
		}
	} else if status == 0 {
		status = http.StatusOK
	}
	h.audit(auditRecord{Event: auditRequest, Client: client, Method: r.Method, Path: path, Status: status})
	return err
}
