// max_uses: how many successful logins each credential (email and hash) has
// had, so that a credential can be single-use.

package breakglass

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/caddyserver/certmagic"
)

// usesBackend counts successful logins per credential.
type usesBackend interface {
	// claim counts one more use if fewer than max were made, and returns
	// the count after it.
	claim(scope string, max int) (n int, ok bool, err error)
	// release gives back a use claimed for a login that was then refused.
	release(scope string) error
	count(scope string) (int, error)
}

type memoryUses struct {
	mu sync.Mutex
	m  map[string]int
}

func (u *memoryUses) claim(scope string, max int) (int, bool, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m[scope] >= max {
		return u.m[scope], false, nil
	}
	u.m[scope]++
	return u.m[scope], true, nil
}

func (u *memoryUses) release(scope string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m[scope] > 0 {
		u.m[scope]--
	}
	return nil
}

func (u *memoryUses) count(scope string) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.m[scope], nil
}

// storageUses keeps the counts in storage, changed under a storage lock.
type storageUses struct{ st certmagic.Storage }

const usesDir = "break_glass/uses"

func (u storageUses) load(ctx context.Context, key string) (int, error) {
	b, err := u.st.Load(ctx, key)
	if notExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %v", key, err)
	}
	return n, nil
}

func (u storageUses) change(scope string, fn func(n int) (int, bool)) (n int, ok bool, err error) {
	key := usesDir + "/" + scope
	ctx, cancel := opCtx()
	defer cancel()
	if err := u.st.Lock(ctx, key); err != nil {
		return 0, false, err
	}
	defer func() { err = errors.Join(err, unlock(u.st, key)) }()
	cur, err := u.load(ctx, key)
	if err != nil {
		return 0, false, err
	}
	n, ok = fn(cur)
	if !ok || n == cur {
		return n, ok, nil
	}
	return n, ok, u.st.Store(ctx, key, []byte(strconv.Itoa(n)))
}

func (u storageUses) claim(scope string, max int) (int, bool, error) {
	return u.change(scope, func(n int) (int, bool) {
		if n >= max {
			return n, false
		}
		return n + 1, true
	})
}

func (u storageUses) release(scope string) error {
	_, _, err := u.change(scope, func(n int) (int, bool) { return max(n-1, 0), true })
	return err
}

func (u storageUses) count(scope string) (int, error) {
	ctx, cancel := opCtx()
	defer cancel()
	return u.load(ctx, usesDir+"/"+scope)
}

// spent reports whether an account has had its max_uses logins.
func (h *Handler) spent(acc *account) (bool, error) {
	if acc.maxUses == 0 {
		return false, nil
	}
	n, err := h.app.uses.count(acc.credential)
	return n >= acc.maxUses, err
}

// allSpent reports whether every account has had its max_uses logins: the
// door is then closed to all, and may say so before any password.
func (h *Handler) allSpent() (bool, error) {
	for _, acc := range h.accounts {
		if spent, err := h.spent(acc); err != nil || !spent {
			return false, err
		}
	}
	return true, nil
}
