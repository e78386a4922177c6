// A movable clock for tests: the package's `now` is replaced for one test.

package breakglass

import (
	"sync"
	"testing"
	"time"
)

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

// useTestClock makes the package clock a testClock starting at a fixed time,
// restored when the test ends.
func useTestClock(t *testing.T) *testClock {
	t.Helper()
	c := &testClock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	old := now
	now = c.Now
	t.Cleanup(func() { now = old })
	return c
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
