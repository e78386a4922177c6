// The drill: a test of every delivery channel (the code mail of each
// break_glass handler and each of its alert channels) without anyone
// signing in, and the record of when it last ran.

package breakglass

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Storage keys of the drill record: the last drill, and the last one in
// which every channel delivered.
const (
	drillKey   = "break_glass/drill/last"
	drillOKKey = "break_glass/drill/last_ok"
)

// drilling is set by `caddy break-glass drill` before it loads the config:
// handlers then open no audit log.
var drilling atomic.Bool

// drillTimeout bounds the whole drill; each delivery has its own timeout
// (SMTP's, webhookTimeout) within it.
var drillTimeout = time.Minute

// drillResult is the outcome of one channel of a drill.
type drillResult struct {
	Email   string `json:"email"`
	Channel string `json:"channel"`
	Target  string `json:"target"`
	OK      bool   `json:"ok"`
	Error   string `json:"error,omitempty"`
}

// drillRecord is a whole drill, as stored and as `--json` prints it.
type drillRecord struct {
	Time    time.Time     `json:"time"`
	Host    string        `json:"host"`
	OK      bool          `json:"ok"`
	Results []drillResult `json:"results"`
}

// failed lists the channels that failed, for an error message.
func (rec drillRecord) failed() []string {
	var out []string
	for _, r := range rec.Results {
		if !r.OK {
			out = append(out, fmt.Sprintf("%s %s (%s): %s", r.Email, r.Channel, r.Target, r.Error))
		}
	}
	return out
}

// drillTask is one delivery of a drill.
type drillTask struct {
	result drillResult
	key    string // the same delivery, configured twice, is made once
	send   func(ctx context.Context) error
}

// drillTasks lists what a drill sends: for each account of each handler, a
// code mail to its email and a drill alert to each of the handler's alert
// channels. The same delivery
// configured on several handlers is made once.
func (a *App) drillTasks(host string, at time.Time) []drillTask {
	var tasks []drillTask
	seen := map[string]bool{}
	add := func(t drillTask) {
		if !seen[t.key] {
			seen[t.key] = true
			tasks = append(tasks, t)
		}
	}
	for _, h := range a.handlers.all() {
		for _, acc := range h.accounts {
			res := drillResult{Email: acc.email, Channel: "code_email", Target: acc.email}
			key := fmt.Sprintf("code %p %s", h.mailer, acc.email)
			if h.mailer == nil {
				add(drillTask{result: res, key: key, send: func(context.Context) error {
					return errors.New("no smtp configured: codes only go to the log (dev_log_code)")
				}})
			} else {
				msg := drillCodeMail(acc.email, host, at)
				add(drillTask{result: res, key: key, send: func(ctx context.Context) error { return h.mailer.send(ctx, msg) }})
			}
			ev := drillEvent(acc.email, host, at)
			for _, c := range h.alerts.channels() {
				add(drillTask{result: drillResult{Email: acc.email, Channel: c.kind, Target: c.target}, key: acc.email + " " + c.key,
					send: func(ctx context.Context) error { return c.send(ctx, ev) }})
			}
		}
	}
	return tasks
}

// drill sends every delivery of every handler at once, waits for them all
// and returns the outcome, in the order the handlers were configured.
func (a *App) drill(ctx context.Context, host string) (drillRecord, error) {
	at := now()
	tasks := a.drillTasks(host, at)
	if len(tasks) == 0 {
		return drillRecord{}, errors.New("no break_glass handler in the config")
	}
	ctx, cancel := context.WithTimeout(ctx, drillTimeout)
	defer cancel()
	rec := drillRecord{Time: at.UTC(), Host: host, OK: true, Results: make([]drillResult, len(tasks))}
	var wg sync.WaitGroup
	for i, t := range tasks {
		wg.Go(func() {
			res := t.result
			if err := t.send(ctx); err != nil {
				res.Error = err.Error()
				metricDeliveries.WithLabelValues(res.Channel, "error").Inc()
			} else {
				res.OK = true
				metricDeliveries.WithLabelValues(res.Channel, "ok").Inc()
			}
			rec.Results[i] = res
		})
	}
	wg.Wait()
	slices.SortStableFunc(rec.Results, func(x, y drillResult) int {
		return cmp.Or(cmp.Compare(x.Email, y.Email), cmp.Compare(x.Channel, y.Channel), cmp.Compare(x.Target, y.Target))
	})
	for _, r := range rec.Results {
		rec.OK = rec.OK && r.OK
	}
	log := a.logger.With(zap.Time("drill_time", rec.Time), zap.Int("channels", len(rec.Results)))
	if rec.OK {
		log.Info("break-glass drill: every channel delivered")
	} else {
		log.Error("break-glass drill: some channels failed", zap.Strings("failed", rec.failed()))
	}
	return rec, nil
}

// recordDrill stores the drill, and, when every channel delivered, its time
// as the last good drill (what the last_drill metric shows).
func recordDrill(ctx context.Context, st certmagic.Storage, rec drillRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := st.Store(ctx, drillKey, b); err != nil {
		return err
	}
	if rec.OK {
		return st.Store(ctx, drillOKKey, b)
	}
	return nil
}

// loadDrill reads a stored drill record; ok is false when there is none.
func loadDrill(ctx context.Context, st certmagic.Storage, key string) (rec drillRecord, ok bool, err error) {
	b, err := st.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, false, fmt.Errorf("%s: %v", key, err)
	}
	return rec, true, nil
}

// drillCacheFor is how long the last_drill metric reuses what it read.
const drillCacheFor = 10 * time.Second

// lastDrill caches the time of the last good drill, read from the running
// config's storage at most every drillCacheFor, so that a scrape sees a
// drill run by `caddy break-glass drill` in another process.
var lastDrill struct {
	mu   sync.Mutex
	st   certmagic.Storage
	read time.Time
	unix float64
}

func lastDrillSeconds() float64 {
	a := currentApp.Load()
	lastDrill.mu.Lock()
	defer lastDrill.mu.Unlock()
	if a == nil || a.storage == nil {
		return lastDrill.unix
	}
	t := now()
	if lastDrill.st == a.storage && t.Sub(lastDrill.read) < drillCacheFor {
		return lastDrill.unix
	}
	ctx, cancel := opCtx()
	defer cancel()
	rec, ok, err := loadDrill(ctx, a.storage, drillOKKey)
	if err != nil {
		a.logger.Error("break-glass: reading the last drill from storage", zap.Error(err))
		return lastDrill.unix
	}
	lastDrill.st, lastDrill.read, lastDrill.unix = a.storage, t, 0
	if ok {
		lastDrill.unix = float64(rec.Time.Unix())
	}
	return lastDrill.unix
}

// forgetLastDrill makes the next scrape read the drill record afresh.
func forgetLastDrill() {
	lastDrill.mu.Lock()
	lastDrill.read = time.Time{}
	lastDrill.mu.Unlock()
}
