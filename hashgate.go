// The queue for password-checking slots: a bounded number of comparisons run
// at once, within a bound on the memory they take (argon2id's), and a client
// with fewer failures in its window is served before clients that keep
// failing, so that a flood cannot jam the door for an operator who has not
// failed.

package breakglass

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// hashGate hands out max_concurrent_hashes slots, each with the memory its
// comparison takes, out of max_hash_memory. Waiters are served by their
// priority (the client's failures in its window: 0 first), then in the
// order they came; the first waiter is served before any other, even one
// that would fit, so that a large one is never starved.
type hashGate struct {
	mu      sync.Mutex
	free    int
	freeMem int64
	seq     uint64
	waiters waiterHeap
}

type hashWaiter struct {
	prio    int
	seq     uint64
	mem     int64
	index   int // in the heap; -1 once handed a slot or gone
	granted chan struct{}
}

func newHashGate(slots int, memory int64) *hashGate { return &hashGate{free: slots, freeMem: memory} }

// acquire waits up to wait for a slot with mem bytes. It returns false when
// none was handed to it in time or ctx ended; a true acquire must be
// followed by one release of the same mem.
func (g *hashGate) acquire(ctx context.Context, prio int, mem int64, wait time.Duration) bool {
	g.mu.Lock()
	if g.free > 0 && g.freeMem >= mem && len(g.waiters) == 0 {
		g.free--
		g.freeMem -= mem
		g.mu.Unlock()
		return true
	}
	g.seq++
	w := &hashWaiter{prio: prio, seq: g.seq, mem: mem, granted: make(chan struct{})}
	heap.Push(&g.waiters, w)
	g.mu.Unlock()

	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-w.granted:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if w.index < 0 { // handed a slot while giving up: keep it
		return true
	}
	heap.Remove(&g.waiters, w.index)
	g.grant() // a waiter behind it may fit now
	return false
}

// release gives back a slot and its memory, and serves the waiters that
// now fit, first first.
func (g *hashGate) release(mem int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.free++
	g.freeMem += mem
	g.grant()
}

func (g *hashGate) grant() {
	for len(g.waiters) > 0 && g.free > 0 && g.freeMem >= g.waiters[0].mem {
		w := heap.Pop(&g.waiters).(*hashWaiter)
		g.free--
		g.freeMem -= w.mem
		close(w.granted)
	}
}

// waiterHeap orders waiters by priority, then arrival.
type waiterHeap []*hashWaiter

func (h waiterHeap) Len() int { return len(h) }
func (h waiterHeap) Less(i, j int) bool {
	if h[i].prio != h[j].prio {
		return h[i].prio < h[j].prio
	}
	return h[i].seq < h[j].seq
}
func (h waiterHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *waiterHeap) Push(x any) {
	w := x.(*hashWaiter)
	w.index = len(*h)
	*h = append(*h, w)
}
func (h *waiterHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	w.index = -1
	*h = old[:len(old)-1]
	return w
}
