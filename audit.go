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
// with closeAuditLog.
func openAuditLog(p string) (*auditLog, string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, "", err
	}
	v, _, err := auditPool.LoadOrNew(abs, func() (caddy.Destructor, error) { return newAuditLog(abs) })
	if err != nil {
		return nil, "", err
	}
	return v.(*auditLog), abs, nil
}

func closeAuditLog(abs string) error {
	_, err := auditPool.Delete(abs)
	return err
}

// newAuditLog opens the file for appending and finds the chain head: the
// hash of its last line.
func newAuditLog(path string) (*auditLog, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	a := &auditLog{path: path, f: f, head: auditGenesis}
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
			return nil, err
		}
	}
	if len(last) > 0 {
		if last[len(last)-1] != '\n' {
			// A line cut short (a crash mid-write): end it, so that the next
			// line starts on its own; verify-audit will name it.
			if _, err := f.Write([]byte{'\n'}); err != nil {
				f.Close()
				return nil, err
			}
		}
		a.head = lineHash(bytes.TrimSuffix(last, []byte{'\n'}))
	}
	return a, nil
}

func lineHash(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}

// Destruct closes the file once no config uses it.
func (a *auditLog) Destruct() error { return a.f.Close() }

// write appends rec and returns the new chain head.
func (a *auditLog) write(rec auditRecord) (string, error) {
	if rec.Time == "" {
		rec.Time = now().UTC().Format(time.RFC3339Nano)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
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

// verifyAudit checks a whole audit log: each line's hash against its
// content, and its prev against the line before. It returns how many lines
// it read and the chain head, or an error naming the first broken line.
func verifyAudit(r io.Reader) (int, string, error) {
	rd := bufio.NewReader(r)
	prev, n := auditGenesis, 0
	for {
		line, err := rd.ReadBytes('\n')
		if len(line) == 0 && err == io.EOF {
			return n, prev, nil
		}
		if err != nil && err != io.EOF {
			return n, prev, err
		}
		n++
		if line[len(line)-1] != '\n' {
			return n, prev, fmt.Errorf("line %d: cut short (no end of line)", n)
		}
		line = line[:len(line)-1]
		if err := checkAuditLine(line, prev); err != nil {
			return n, prev, fmt.Errorf("line %d: %w", n, err)
		}
		prev = lineHash(line)
	}
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
	if s.status == 0 && code >= 200 {
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
