package bgtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"
)

// HookRequest is one request the webhook received.
type HookRequest struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
	JSON   map[string]any // Body decoded; nil unless it is a JSON object
}

// Webhook is an HTTP server receiving alerts, stopped when the test ends.
type Webhook struct {
	URL string

	mu      sync.Mutex
	reqs    []HookRequest
	arrived chan struct{} // closed, and replaced, at each request
	status  int
	hang    bool
	ended   chan struct{} // closed when the test ends
}

// StartWebhook starts a webhook receiver answering 204.
func StartWebhook(t testing.TB) *Webhook {
	w := &Webhook{status: http.StatusNoContent, arrived: make(chan struct{}), ended: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(w.serve))
	w.URL = srv.URL
	t.Cleanup(func() { close(w.ended); srv.Close() })
	return w
}

func (w *Webhook) serve(rw http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	hr := HookRequest{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body}
	var obj map[string]any
	if json.Unmarshal(body, &obj) == nil {
		hr.JSON = obj
	}
	w.mu.Lock()
	w.reqs = append(w.reqs, hr)
	close(w.arrived)
	w.arrived = make(chan struct{})
	status, hang := w.status, w.hang
	w.mu.Unlock()
	if hang {
		select {
		case <-w.ended:
		case <-r.Context().Done():
		}
		return
	}
	rw.WriteHeader(status)
}

// SetStatus makes the webhook answer the next requests with status.
func (w *Webhook) SetStatus(status int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.status = status
}

// Hang makes the webhook never answer the next requests: each is held
// until the test ends or the sender gives up.
func (w *Webhook) Hang() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.hang = true
}

// Requests are the requests received so far, in order.
func (w *Webhook) Requests() []HookRequest {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.reqs)
}

// Events are the JSON objects received so far, in order.
func (w *Webhook) Events() []map[string]any {
	var out []map[string]any
	for _, r := range w.Requests() {
		if r.JSON != nil {
			out = append(out, r.JSON)
		}
	}
	return out
}

// Count is how many requests so far had this "event".
func (w *Webhook) Count(event string) int {
	n := 0
	for _, ev := range w.Events() {
		if ev["event"] == event {
			n++
		}
	}
	return n
}

// Wait waits until n requests arrived and returns every request so far.
func (w *Webhook) Wait(t testing.TB, n int) []HookRequest {
	t.Helper()
	return w.waitFor(t, fmt.Sprint(n, " requests"), func(reqs []HookRequest) bool { return len(reqs) >= n })
}

// WaitEvent waits for a request whose JSON "event" is event and returns the
// first such request.
func (w *Webhook) WaitEvent(t testing.TB, event string) HookRequest {
	t.Helper()
	is := func(r HookRequest) bool { return r.JSON["event"] == event }
	reqs := w.waitFor(t, "a "+event+" event", func(reqs []HookRequest) bool { return slices.ContainsFunc(reqs, is) })
	return reqs[slices.IndexFunc(reqs, is)]
}

// WaitEvents waits until n requests had this "event" and returns their JSON.
func (w *Webhook) WaitEvents(t testing.TB, event string, n int) []map[string]any {
	t.Helper()
	var out []map[string]any
	w.waitFor(t, fmt.Sprint(n, " ", event, " events"), func(reqs []HookRequest) bool {
		out = out[:0]
		for _, r := range reqs {
			if r.JSON["event"] == event {
				out = append(out, r.JSON)
			}
		}
		return len(out) >= n
	})
	return out
}

func (w *Webhook) waitFor(t testing.TB, what string, done func([]HookRequest) bool) []HookRequest {
	t.Helper()
	deadline := time.NewTimer(WaitTimeout)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		reqs, arrived := slices.Clone(w.reqs), w.arrived
		w.mu.Unlock()
		if done(reqs) {
			return reqs
		}
		select {
		case <-arrived:
		case <-deadline.C:
			t.Fatalf("the webhook got %d requests in %v, not %s", len(reqs), WaitTimeout, what)
			return nil
		}
	}
}
