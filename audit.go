// The tamper-evident audit log (audit_log): one JSON line per event, each
// carrying the SHA-256 of the line before ("prev") and of its own content
// ("hash"), so that an edited, removed or reordered line breaks the chain
// at that line. `caddy break-glass verify-audit` checks a file.

package breakglass

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

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
	// By is who decided an approval request; Approval is its ID.
	By       string `json:"by,omitempty"`
	Approval string `json:"approval,omitempty"`
	// Before is, on a "recovered" line, the chain head before the cut line.
	Before string `json:"before,omitempty"`
	Prev   string `json:"prev"`
}

// Audit events.
const (
	auditCodeIssued  = "code_issued"
	auditLogin       = "login"
	auditLockout     = "lockout"
	auditLogout      = "logout"
	auditRequest     = "request"
	auditRefused     = "login_refused"
	auditSpent       = "credential_spent"
	auditUnlock      = "admin_unlock"
	auditRevoke      = "admin_revoke"
	auditPending     = "login_pending"
	auditRecovered   = "recovered"
	auditContinued   = "chain_continued"
	auditKeyEnrolled = "key_enrolled"
	auditKeyCloned   = "key_clone_warning"
	// Second-person control.
	auditApprovalAsked   = "approval_requested"
	auditApproved        = "approved"
	auditApprovalRefused = "approval_refused"
	auditApprovalTimeout = "approval_timeout"
)

// auditFile is what the audit log needs of its file (an *os.File; tests
// put faults in between).
type auditFile interface {
	io.Writer
	io.ReaderAt
	Truncate(size int64) error
	Stat() (os.FileInfo, error)
	SyscallConn() (syscall.RawConn, error)
	Close() error
}

// auditLog appends to one file. Every handler (and every config, across
// reloads) naming the same file, by any path, shares one auditLog (see
// openAuditLog). Other processes may append to the file too: each append
// holds the file's lock (lockAuditFile) and first reads the chain head
// from the end of the file (readAuditTail), so that the chain goes on from
// whatever line is last, whoever wrote it.
type auditLog struct {
	path string
	mu   sync.Mutex
	f    auditFile
	head string // SHA-256 of the last line, as last read or written
	size int64  // of the file, after our last append (under the lock)

	// Of auditWriters, under its lock.
	id   auditFileID
	uses int
}

// auditMaxLine bounds an audit line: the writer clips long fields
// (clipAuditField) so that its lines stay well below it, and the end of
// the file is read at most two such lines back to find the chain head.
const auditMaxLine = 1 << 20

// auditMaxField is the most bytes of one field kept on a line: six such
// fields, every byte escaped to six in JSON, stay below auditMaxLine.
const auditMaxField = 16 << 10

// newAuditLog opens the file for appending and finds the chain head: the
// hash of its last line. A last line cut short (a crash mid-write) is ended
// and followed by a "recovered" line, so that the chain goes on from it.
// It is not pooled: openAuditLog is.
func newAuditLog(path string) (*auditLog, error) {
	f, err := openAuditFile(path)
	if err != nil {
		return nil, err
	}
	a := &auditLog{path: path}
	if err := a.use(f, auditGenesis); err != nil {
		f.Close()
		return nil, err
	}
	return a, nil
}

// use makes f the file appended to: under its lock, it reads the chain
// head, recovers a cut last line and, when the file is empty and carried
// is the head of a file before (moved aside), writes a "chain_continued"
// line naming it. On failure, a is as before (f is the caller's to close).
func (a *auditLog) use(f auditFile, carried string) error {
	oldF, oldHead, oldSize := a.f, a.head, a.size
	a.f, a.head, a.size = f, auditGenesis, 0
	err := a.locked(func() error {
		if _, err := a.appendLocked(auditRecord{}); err != nil {
			return err
		}
		if a.head == auditGenesis && carried != auditGenesis {
			_, err := a.appendLine(auditRecord{Event: auditContinued, Detail: "the file before this one (moved aside) ended with the chain head " + carried})
			return err
		}
		return nil
	})
	if err != nil {
		a.f, a.head, a.size = oldF, oldHead, oldSize
	}
	return err
}

// reopenIfMoved starts a new file when the one at p is no longer the one
// open (it was moved aside or deleted). It reports whether it did.
func (a *auditLog) reopenIfMoved(p string) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	held, err := a.f.Stat()
	if err != nil {
		return false, err
	}
	if cur, err := os.Stat(p); err == nil && os.SameFile(held, cur) {
		return false, nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	// The head of the file moved aside as it is now: another process may
	// have appended to it since we did.
	oldHead := a.head
	_ = a.locked(func() error {
		fi, err := a.f.Stat()
		if err != nil {
			return err
		}
		t, err := readAuditTail(a.f, fi.Size())
		if err == nil {
			oldHead = t.head
		}
		return err
	})
	f, err := openAuditFile(p)
	if err != nil {
		return false, err
	}
	old, oldPath := a.f, a.path
	a.path = p
	if err := a.use(f, oldHead); err != nil {
		a.path = oldPath
		f.Close()
		return false, err
	}
	_ = old.Close()
	return true, nil
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
	var head string
	err := a.locked(func() error {
		var err error
		head, err = a.appendLocked(rec)
		return err
	})
	if head == "" {
		head = a.head
	}
	return head, err
}

// locked runs fn (under a.mu) holding the lock of a's file, which every
// writer of the file, in any process, takes to append.
func (a *auditLog) locked(fn func() error) error {
	unlock, err := lockAuditFile(a.f)
	if err != nil {
		return fmt.Errorf("locking the audit log: %w", err)
	}
	err = fn()
	if uerr := unlock(); err == nil && uerr != nil {
		err = fmt.Errorf("unlocking the audit log: %w", uerr)
	}
	return err
}

// appendLocked appends rec (nothing, for an empty rec), under the file's
// lock. It first reads the chain head from the end of the file, and repairs
// what the file went through since our last append: a line cut short (by a
// crash, or a failed write of any writer) is ended and followed by a
// "recovered" line; a file emptied in place (a copytruncate rotation) goes
// on with a "chain_continued" line naming the head before.
func (a *auditLog) appendLocked(rec auditRecord) (string, error) {
	fi, err := a.f.Stat()
	if err != nil {
		return a.head, err
	}
	t, err := readAuditTail(a.f, fi.Size())
	if err != nil {
		return a.head, err
	}
	// Every writer only appends (or undoes its own append) under the lock,
	// so a file smaller than after our last append was emptied in place.
	emptied, old := fi.Size() < a.size, a.head
	a.head, a.size = t.head, fi.Size()
	if t.cut {
		n, err := a.f.Write([]byte{'\n'})
		a.size += int64(n)
		if err != nil {
			return a.head, err
		}
		if _, err := a.appendLine(auditRecord{Event: auditRecovered, Before: t.before,
			Detail: "the line before was cut short (a crash, or a failed write); the chain goes on from its hash"}); err != nil {
			return a.head, err
		}
	}
	if emptied {
		if _, err := a.appendLine(auditRecord{Event: auditContinued, Detail: "the file was emptied in place (a copytruncate rotation); the chain before ended with the head " + old}); err != nil {
			return a.head, err
		}
	}
	if rec.Event == "" {
		return a.head, nil
	}
	return a.appendLine(rec)
}

// auditTail is what the end of an audit file says: the chain head (the
// hash of the last line, whole or cut short), whether the last line was
// cut short (has no end of line), and then the head before it.
type auditTail struct {
	head   string
	cut    bool
	before string
}

// readAuditTail reads the end of f, of the given size, backwards in
// growing chunks until it has the last line (and, for a cut one, the line
// before), at most two lines of auditMaxLine.
func readAuditTail(f io.ReaderAt, size int64) (auditTail, error) {
	t := auditTail{head: auditGenesis, before: auditGenesis}
	if size == 0 {
		return t, nil
	}
	const limit = 2*auditMaxLine + 2
	for n := int64(4 << 10); ; n = min(2*n, limit) {
		off := max(size-n, 0)
		buf := make([]byte, size-off)
		if m, err := f.ReadAt(buf, off); m < len(buf) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF // the file shrank meanwhile
			}
			return t, err
		}
		body := buf
		whole := body[len(body)-1] == '\n'
		if whole {
			body = body[:len(body)-1]
		}
		i := bytes.LastIndexByte(body, '\n') // the end of the line before
		j := -1                              // the end of the one before that, for a cut line
		if !whole && i >= 0 {
			j = bytes.LastIndexByte(body[:i], '\n')
		}
		if off > 0 && (i < 0 || !whole && j < 0) {
			if n >= limit {
				return t, fmt.Errorf("the last line of the audit log, or the one before, is longer than %d bytes (is it an audit log?)", auditMaxLine)
			}
			continue
		}
		t.head = lineHash(body[i+1:])
		if !whole {
			t.cut = true
			if i >= 0 {
				t.before = lineHash(body[j+1 : i])
			}
		}
		return t, nil
	}
}

// clipAuditField keeps the first auditMaxField bytes of s (to a whole
// character), and says how many more there were.
func clipAuditField(s string) string {
	if len(s) <= auditMaxField {
		return s
	}
	n := auditMaxField
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return fmt.Sprintf("%s…[%d more bytes]", s[:n], len(s)-n)
}

// appendLine writes one record, under the file's lock. A write that fails
// partway is undone, or, when it cannot be, left for the next append (by
// any writer) to repair.
func (a *auditLog) appendLine(rec auditRecord) (string, error) {
	if rec.Time == "" {
		rec.Time = now().UTC().Format(time.RFC3339Nano)
	}
	for _, s := range []*string{&rec.Email, &rec.Client, &rec.Reason, &rec.Method, &rec.Path, &rec.Detail} {
		*s = clipAuditField(*s)
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
	head, err := h.auditLog.write(rec)
	if err != nil {
		fields := []zap.Field{zap.String("audit_log", h.auditPath), zap.String("event", rec.Event), zap.Error(err)}
		if rec.Email != "" {
			fields = append(fields, zap.String("email", rec.Email))
		}
		h.logger.Error("break-glass: writing the audit log", fields...)
	}
	return head
}
