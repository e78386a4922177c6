//go:build !(darwin || dragonfly || freebsd || illumos || linux || netbsd || openbsd)

// Where there is no syscall.Flock (Windows, Solaris, AIX, …): the audit
// log's lock is an in-process mutex only. One Caddy process may write the
// file, through any number of handlers and paths; several processes on one
// file are not kept apart, and may break the chain.

package breakglass

import (
	"path/filepath"
	"sync"
)

// auditFileMu serialises every audit append in this process (a writer
// never holds two files' locks at once).
var auditFileMu sync.Mutex

// lockAuditFile takes the in-process lock (not a lock on the file) and
// returns its release.
func lockAuditFile(auditFile) (func() error, error) {
	auditFileMu.Lock()
	return func() error { auditFileMu.Unlock(); return nil }, nil
}

// auditFileID is a file's identity here: its path with every symbolic link
// resolved (two hard links to one file are two files).
type auditFileID struct{ path string }

// auditFileKey is the identity of the open file f at path.
func auditFileKey(path string, _ auditFile) (auditFileID, error) {
	p, err := filepath.EvalSymlinks(path)
	if err != nil {
		return auditFileID{}, err
	}
	return auditFileID{path: p}, nil
}
