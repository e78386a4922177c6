//go:build darwin || dragonfly || freebsd || illumos || linux || netbsd || openbsd

// Where syscall.Flock is: the audit log's lock is flock(2), which every
// writer of the file takes, in this process or another.

package breakglass

import (
	"errors"
	"syscall"
)

// lockAuditFile takes an exclusive flock(2) on f, waiting for it, and
// returns its release. The lock belongs to f's open file, so two opens of
// one file exclude each other in one process too. It is advisory: it
// keeps out only writers that take it (every break_glass writer does).
func lockAuditFile(f auditFile) (func() error, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	if err := flock(rc, syscall.LOCK_EX); err != nil {
		return nil, err
	}
	return func() error { return flock(rc, syscall.LOCK_UN) }, nil
}

func flock(rc syscall.RawConn, how int) error {
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			if ferr = syscall.Flock(int(fd), how); ferr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return ferr
}

// auditFileID is a file's identity: its device and inode.
type auditFileID struct{ dev, ino uint64 }

// auditFileKey is the identity of the open file f (at path).
func auditFileKey(_ string, f auditFile) (auditFileID, error) {
	fi, err := f.Stat()
	if err != nil {
		return auditFileID{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return auditFileID{}, errors.New("no device and inode for the audit log")
	}
	return auditFileID{dev: uint64(st.Dev), ino: uint64(st.Ino)}, nil //nolint:unconvert // their types vary by system
}
