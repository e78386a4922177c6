// The bounded background runner every mail and webhook goes through, and
// the logging of each delivery's outcome.

package breakglass

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// deliveryGrace is how long stopping waits for deliveries in flight (an
// alert for a login made just before a shutdown) before cancelling them.
var deliveryGrace = 5 * time.Second

// maxInFlightDeliveries bounds the mails and webhooks running at once across
// the app; a delivery beyond it is dropped and logged at ERROR. Lockout
// alerts have their own, smaller bound.
const (
	maxInFlightDeliveries = 256
	maxInFlightNotices    = 32
)

// dispatcher runs deliveries in the background so that no response waits on
// SMTP or a webhook. It bounds how many run at once and, on close, cancels
// them and waits until every one has returned.
type dispatcher struct {
	ctx    context.Context
	cancel context.CancelFunc
	slots  chan struct{}

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

func newDispatcher(limit int) *dispatcher {
	ctx, cancel := context.WithCancel(context.Background())
	return &dispatcher{ctx: ctx, cancel: cancel, slots: make(chan struct{}, limit)}
}

// run starts fn in the background. It returns false, without running fn, when
// the dispatcher is closed or full.
func (d *dispatcher) run(fn func(ctx context.Context)) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	select {
	case d.slots <- struct{}{}:
	default:
		return false
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer func() { <-d.slots }()
		fn(d.ctx)
	}()
	return true
}

// close refuses new deliveries, gives those in flight up to grace to finish,
// then cancels the rest and waits for them to return.
func (d *dispatcher) close(grace time.Duration) {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	d.cancel()
	<-done
}

// errDropped is the outcome of a delivery that could not start.
var errDropped = errors.New("dropped: too many deliveries in flight, or the app is stopping")

// deliver runs one delivery in the background and logs its outcome: INFO
// when delivered, ERROR when it failed or could not even start. done, if
// not nil, gets the outcome.
func (d *dispatcher) deliver(channel string, log *zap.Logger, fn func(ctx context.Context) error, done func(error)) {
	log = log.With(zap.String("channel", channel))
	ok := d.run(func(ctx context.Context) {
		start := now()
		err := fn(ctx)
		if err != nil {
			var se *webhookStatusError
			fields := []zap.Field{zap.Error(err), zap.Duration("duration", now().Sub(start))}
			if errors.As(err, &se) {
				fields = append(fields, zap.Int("status", se.status))
			}
			metricDeliveries.WithLabelValues(channel, "error").Inc()
			log.Error("break-glass delivery failed", fields...)
		} else {
			metricDeliveries.WithLabelValues(channel, "ok").Inc()
			log.Info("break-glass delivery succeeded", zap.Duration("duration", now().Sub(start)))
		}
		if done != nil {
			done(err)
		}
	})
	if !ok {
		metricDeliveries.WithLabelValues(channel, "dropped").Inc()
		log.Error("break-glass delivery dropped: too many deliveries in flight, or the app is stopping")
		if done != nil {
			done(errDropped)
		}
	}
}
