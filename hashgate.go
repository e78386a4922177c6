// The queue for password-checking slots: a bounded number of comparisons run
// at once, and a client with fewer failures in its window is served before
// clients that keep failing, so that a flood cannot jam the door for an
// operator who has not failed.

package breakglass

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// hashGate hands out max_concurrent_hashes slots. Waiters are served by
// their priority (the client's failures in its window: 0 first), then in
// the order they came.
type hashGate struct {
	mu      sync.Mutex
	free    int
	seq     uint64
	waiters waiterHeap
}

type hashWaiter struct {
	prio    int
	seq     uint64
	index   int // in the heap; -1 once handed a slot or gone
	granted chan struct{}
}

func newHashGate(slots int) *hashGate { return &hashGate{free: slots} }

// acquire waits up to wait for a slot. It returns false when none was
// handed to it in time or ctx ended; a true acquire must be followed by one
// release.
func (g *hashGate) acquire(ctx context.Context, prio int, wait time.Duration) bool {
	g.mu.Lock()
	if g.free > 0 && len(g.waiters) == 0 {
		g.free--
		g.mu.Unlock()
		return true
	}
	g.seq++
	w := &hashWaiter{prio: prio, seq: g.seq, granted: make(chan struct{})}
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
	return false
}

// release gives the slot to the first waiter, or frees it.
func (g *hashGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.waiters) > 0 {
		w := heap.Pop(&g.waiters).(*hashWaiter)
		close(w.granted)
		return
	}
	g.free++
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
