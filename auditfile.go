// The audit log's file: one writer per file (by device and inode) shared by
// every handler and config that names it, and reopening it when it was
// rotated.

package breakglass

import (
	"os"
	"path/filepath"
	"sync"
)

// auditRegistry pools the open audit logs: by file identity (device and
// inode; see auditFileKey), so that two paths to one file (through a
// symlinked directory, say) share one writer and one head; and by each path
// opened, so that a path whose file was moved aside finds the writer that
// follows it to the new file (reopenIfMoved).
type auditRegistry struct {
	mu     sync.Mutex
	byID   map[auditFileID]*auditLog
	byPath map[string]*auditPathUse
}

// auditPathUse is a path's writer, and how many users opened it by that
// path.
type auditPathUse struct {
	a    *auditLog
	refs int
}

var auditWriters = &auditRegistry{byID: map[auditFileID]*auditLog{}, byPath: map[string]*auditPathUse{}}

// openAuditLog opens (or shares) the audit log at p. The caller releases it
// with closeAuditLog of the path returned. A file that was moved aside
// (rotated) since it was opened is replaced by a new one at p, whose first
// line names the chain head of the one before.
func openAuditLog(p string) (*auditLog, string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, "", err
	}
	w := auditWriters
	w.mu.Lock()
	defer w.mu.Unlock()
	if u := w.byPath[abs]; u != nil {
		a := u.a
		moved, err := a.reopenIfMoved(abs)
		if err != nil {
			return nil, "", err
		}
		if moved {
			w.reindex(a)
		}
		u.refs++
		a.uses++
		return a, abs, nil
	}
	// The file is created first: only a file has an identity.
	f, err := openAuditFile(abs)
	if err != nil {
		return nil, "", err
	}
	id, err := auditFileKey(abs, f)
	if err != nil {
		f.Close()
		return nil, "", err
	}
	a := w.byID[id]
	if a != nil {
		f.Close() // open already, by another path
	} else {
		a = &auditLog{path: abs, id: id}
		if err := a.use(f, auditGenesis); err != nil {
			f.Close()
			return nil, "", err
		}
		w.byID[id] = a
	}
	w.byPath[abs] = &auditPathUse{a: a, refs: 1}
	a.uses++
	return a, abs, nil
}

// reindex files a under the identity of the file it has open now, after it
// followed a path to a new file. Should another writer have that file open
// already (the path was made to point to it), both go on appending to it,
// the file's lock keeping the chain whole, and later openings share that
// one.
func (w *auditRegistry) reindex(a *auditLog) {
	if w.byID[a.id] == a {
		delete(w.byID, a.id)
	}
	a.mu.Lock()
	id, err := auditFileKey(a.path, a.f)
	a.mu.Unlock()
	if err != nil {
		a.id = auditFileID{}
		return
	}
	a.id = id
	if w.byID[id] == nil {
		w.byID[id] = a
	}
}

// closeAuditLog releases a use of the audit log opened at abs (a path that
// openAuditLog returned), and closes the file after the last one.
func closeAuditLog(abs string) error {
	w := auditWriters
	w.mu.Lock()
	defer w.mu.Unlock()
	u := w.byPath[abs]
	if u == nil {
		return nil
	}
	if u.refs--; u.refs == 0 {
		delete(w.byPath, abs)
	}
	a := u.a
	if a.uses--; a.uses > 0 {
		return nil
	}
	if w.byID[a.id] == a {
		delete(w.byID, a.id)
	}
	return a.Destruct()
}

func openAuditFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
}
