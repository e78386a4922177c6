// Prometheus metrics, served by Caddy's admin endpoint (/metrics). The
// collectors are made once, so counts survive reloads, and registered into
// the registry of each config that loads the app.

package breakglass

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of sign-in attempts, the values of the `result` label.
const (
	resultForbidden      = "forbidden"
	resultLocked         = "locked"
	resultBadCredentials = "bad_credentials"
	resultCodeSent       = "code_sent"
	resultWrongCode      = "wrong_code"
	resultSuccess        = "success"
	resultBusy           = "busy"
)

var (
	metricAttempts = prometheus.NewCounterVec(prometheus.CounterOpts(opts("attempts_total",
		"Break-glass requests and sign-in steps, by result: forbidden, locked, bad_credentials, code_sent, wrong_code, success, busy.")), []string{"result"})
	metricLockouts = prometheus.NewCounter(prometheus.CounterOpts(opts("lockouts_total",
		"Clients locked out after max_attempts failures.")))
	metricAccountEvents = prometheus.NewCounterVec(prometheus.CounterOpts(opts("account_events_total",
		"Events of a known account (its email, as configured), by event: break_glass_code_issued, break_glass_login, break_glass_logout, …")), []string{"account", "event"})
	metricDeliveries = prometheus.NewCounterVec(prometheus.CounterOpts(opts("deliveries_total",
		"Mails and webhooks sent, by channel (code_email, alert_email, approval_email, webhook) and outcome (ok, error, dropped).")), []string{"channel", "outcome"})
	metricSessions = prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts("sessions_active",
		"Break-glass sessions issued by this process that have neither expired nor been logged out.")), liveSessions)
	metricLastSuccess = prometheus.NewGauge(prometheus.GaugeOpts(opts("last_success_timestamp_seconds",
		"When the last break-glass sign-in succeeded (Unix seconds); 0 if none since the process started.")))
	metricLastDrill = prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts("last_drill_timestamp_seconds",
		"When the last break-glass drill in which every channel delivered ran (Unix seconds), as recorded in the config's storage; 0 if none.")), lastDrillSeconds)
	allMetrics = []prometheus.Collector{metricAttempts, metricLockouts, metricAccountEvents, metricDeliveries, metricSessions, metricLastSuccess, metricLastDrill}
)

// opts names a metric of this plugin: caddy_break_glass_<name>.
func opts(name, help string) prometheus.Opts {
	return prometheus.Opts{Namespace: "caddy", Subsystem: "break_glass", Name: name, Help: help}
}

// registerMetrics adds the collectors to a config's registry; a collector it
// already holds is not an error.
func registerMetrics(reg prometheus.Registerer) error {
	for _, c := range allMetrics {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// liveStates are the states alive in this process (one per state mode and
// storage); sessions_active counts over them.
var liveStates sync.Map // *state → struct{}

func liveSessions() float64 {
	n := 0
	liveStates.Range(func(k, _ any) bool {
		n += k.(*state).sessions.active()
		return true
	})
	return float64(n)
}
