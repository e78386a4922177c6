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
	// Before is, on a "recovered" line, the chain head before the cut line.
	Before string `json:"before,omitempty"`
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
// auditFile is what the audit log needs of its file (an *os.File; tests
// put faults in between).
type auditFile interface {
	io.Writer
	Truncate(size int64) error
	Stat() (os.FileInfo, error)
	Close() error
}

type auditLog struct {
	path string
	mu   sync.Mutex
	f    auditFile
	head string // SHA-256 of the last line
	size int64  // of the file, as written by us

	// After a write that failed partway and could not be undone: the line
	// it cut, to be ended and followed by a "recovered" line at the next
	// write, and the head before it.
	cut    bool
	before string
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
	a := &auditLog{path: path}
	if err := a.openFile(); err != nil {
		return nil, err
	}
	return a, nil
}

// openFile opens a.path, reads its chain head, and recovers a cut last line.
func (a *auditLog) openFile() error {
	f, err := os.OpenFile(a.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	head, before := auditGenesis, auditGenesis
	var size int64
	rd := bufio.NewReader(f)
	var last []byte
	for {
		line, err := rd.ReadBytes('\n')
		size += int64(len(line))
		if len(line) > 0 {
			if last != nil && last[len(last)-1] == '\n' {
				before = lineHash(last[:len(last)-1])
			}
			last = line
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			f.Close()
			return err
		}
	}
	a.f, a.size, a.cut = f, size, false
	switch {
	case len(last) == 0:
		a.head = head
	case last[len(last)-1] == '\n':
		a.head = lineHash(last[:len(last)-1])
	default:
		a.head, a.cut, a.before = lineHash(last), true, before
		if _, err := a.writeLocked(auditRecord{}); err != nil {
			f.Close()
			return err
		}
	}
	return nil
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
	old, oldHead, oldSize, oldCut, oldBefore := a.f, a.head, a.size, a.cut, a.before
	if err := a.openFile(); err != nil {
		a.f, a.head, a.size, a.cut, a.before = old, oldHead, oldSize, oldCut, oldBefore
		return err
	}
	_ = old.Close()
	if a.head == auditGenesis && oldHead != auditGenesis {
		_, err = a.appendLine(auditRecord{Event: auditContinued, Detail: "the file before this one (moved aside) ended with the chain head " + oldHead})
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

// writeLocked appends rec (nothing, for an empty rec), first repairing
// what the file went through since the last write: emptied in place (a
// copytruncate rotation) starts a new chain; a line cut by a failed write is
// ended and followed by a "recovered" line.
func (a *auditLog) writeLocked(rec auditRecord) (string, error) {
	if fi, err := a.f.Stat(); err == nil && fi.Size() < a.size {
		old := a.head
		a.head, a.size, a.cut = auditGenesis, fi.Size(), false
		if fi.Size() > 0 {
			if _, err := a.f.Write([]byte{'\n'}); err != nil {
				return a.head, err
			}
			a.size++
		}
		if _, err := a.appendLine(auditRecord{Event: auditContinued, Detail: "the file was emptied in place (a copytruncate rotation); the chain before ended with the head " + old}); err != nil {
			return a.head, err
		}
	}
	if a.cut {
		n, err := a.f.Write([]byte{'\n'})
		a.size += int64(n)
		if err != nil {
			return a.head, err
		}
		a.cut = false
		if _, err := a.appendLine(auditRecord{Event: auditRecovered, Before: a.before,
			Detail: "the line before was cut short (a crash, or a failed write); the chain goes on from its hash"}); err != nil {
			return a.head, err
		}
	}
	if rec.Event == "" {
		return a.head, nil
	}
	return a.appendLine(rec)
}

// appendLine writes one record. A write that fails partway is undone, or,
// when it cannot be, remembered for writeLocked to repair.
func (a *auditLog) appendLine(rec auditRecord) (string, error) {
	if rec.Time == "" {
		rec.Time = now().UTC().Format(time.RFC3339Nano)
	}
	rec.Prev = a.head
	body, err := json.Marshal(rec)
	if err != nil {
		return a.head, err
	}
	sum := sha256.Sum256(body)
	line := make([]byte, 0, len(body)+81)
	line = append(line, body[:len(body)-1]...)
	line = append(line, `,"hash":"`...)
	line = hex.AppendEncode(line, sum[:])
	line = append(line, `"}`...)
	n, err := a.f.Write(append(line, '\n'))
	if err != nil {
		if n > 0 {
			if a.f.Truncate(a.size) != nil {
				a.size += int64(n)
				a.cut, a.before = true, a.head
				a.head = lineHash(line[:min(n, len(line))])
			}
		}
		return a.head, err
	}
	a.size += int64(n)
	a.head = lineHash(line)
	return a.head, nil
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
			// Only a line that is not a whole record can be one cut by a
			// crash; a whole one with a wrong hash or prev was changed.
			cut := !whole || errors.Is(bad, errAuditFormat)
			if !cut || nextErr != nil || !nextWhole || !recovers(next, line, rep.Head) {
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
// the cut line before it, and naming the head before that line.
func recovers(next, cut []byte, before string) bool {
	if checkAuditLine(next, lineHash(cut)) != nil {
		return false
	}
	var rec auditRecord
	return json.Unmarshal(next, &rec) == nil && rec.Event == auditRecovered && rec.Before == before
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
