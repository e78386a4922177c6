package main

// The "jammed door": the operator's own password step while 200 clients post
// wrong passwords. The flood fills the hashing slots (max_concurrent_hashes at
// its default); what is measured is whether the real operator, from an
// address with no failures, still gets a code, and how long the step takes.
//
// One Caddy: break_glass with the app's defaults except max_attempts, lifted
// so that the flooders are never locked out and want a hash for the whole run
// (the lockout window stays at its default of 15 minutes, so their failures
// count for the whole run). Before the first measurement, every flooder has
// failed once (seeded one at a time, not measured), so that the flood is made
// of clients that keep failing from its first second, as an attack that has
// been running for a while. The operator uses a fresh source address for
// every sample and never reuses one: a client with no failures in its window,
// and never more than one code per address.

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var csrfRE = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

// jamCase is one case (idle or flooded) of one round, or of all rounds.
type jamCase struct {
	name                string
	lat                 []time.Duration // every answered step: codes issued and refusals
	ok, refused, errors int
	other               map[string]int // what the errors were
	secs                float64        // wall time of the case
	cpu                 time.Duration  // Caddy's CPU time (utime+stime) during the case
	others              time.Duration  // CPU time of the machine's other processes (not Caddy, not this tool)
	// The flood during a flooded case:
	hashes, busy, locked int64
}

type jamResult struct {
	cases      []jamCase // in the order they ran
	idle, jam  jamCase   // all rounds
	seeded     int       // flooders with a failure before the first measurement
	seedTime   time.Duration
	total      time.Duration
	addrsFirst string
	addrsLast  string
	load       [2]string // /proc/loadavg (1, 5, 15 min) before and after
}

// loadAvg is the machine's load average, to tell a run on a busy machine.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

// opAddrs hands out the operator's source addresses, each once: 127.0.N.1…
// 127.0.N.250, then N+1, with N just above the flooders' 127.0.1.x….
type opAddrs struct{ third, n int }

func (a *opAddrs) next() string {
	ip := fmt.Sprintf("127.0.%d.%d", a.third+a.n/250, 1+a.n%250)
	a.n++
	return ip
}

func flooderAddr(i int) string { return fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250) }

func boundClient(ip string, timeout time.Duration) *http.Client {
	jar, _ := cookiejar.New(nil)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Jar: jar, Timeout: timeout, Transport: &http.Transport{DialContext: d.DialContext},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// loginForm GETs the login page with hc (collecting the flow cookie in its
// jar) and returns the form's CSRF token.
func loginForm(ctx context.Context, hc *http.Client, cd *caddy) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", cd.url("/guarded/"), nil)
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := csrfRE.FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("no login form at /guarded/ (%d)", resp.StatusCode)
	}
	return string(m[1]), nil
}

func postLogin(ctx context.Context, hc *http.Client, cd *caddy, token, pw string) (int, error) {
	form := url.Values{"break_glass_step": {"login"}, "csrf_token": {token}, "email": {"ops@example.com"}, "password": {pw}}.Encode()
	req, _ := http.NewRequestWithContext(ctx, "POST", cd.url("/guarded/"), strings.NewReader(form))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// operatorStep is one sample: from ip (fresh), GET the form (not timed),
// then POST the right email and password (timed, to the end of the answer).
func operatorStep(cd *caddy, ip string) (status int, d time.Duration, err error) {
	hc := boundClient(ip, 30*time.Second)
	defer hc.CloseIdleConnections()
	ctx := context.Background()
	token, err := loginForm(ctx, hc, cd)
	if err != nil {
		return 0, 0, err
	}
	t := time.Now()
	status, err = postLogin(ctx, hc, cd, token, password)
	return status, time.Since(t), err
}

func (c *jamCase) add(status int, d time.Duration, err error) {
	switch {
	case err != nil:
		c.errors++
		c.other[err.Error()]++
		return
	case status == http.StatusSeeOther:
		c.ok++
	case status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests:
		c.refused++
	default:
		c.errors++
		c.other[strconv.Itoa(status)]++
		return
	}
	c.lat = append(c.lat, d)
}

func (c *jamCase) merge(o jamCase) {
	c.lat = append(c.lat, o.lat...)
	c.ok, c.refused, c.errors = c.ok+o.ok, c.refused+o.refused, c.errors+o.errors
	for k, v := range o.other {
		c.other[k] += v
	}
	c.secs += o.secs
	c.cpu += o.cpu
	c.others += o.others
	c.hashes, c.busy, c.locked = c.hashes+o.hashes, c.busy+o.busy, c.locked+o.locked
}

// cpuTime is the process's utime+stime from /proc/<pid>/stat (0 where there
// is no /proc).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	// Fields 14 and 15 of stat; f[0] is field 3. Clock ticks of 1/100 s
	// (USER_HZ, 100 on every Linux this runs on).
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * 10 * time.Millisecond
}

// machineBusy is the CPU time all CPUs have spent busy (not idle or iowait)
// since boot, from /proc/stat.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy int64
	for i, v := range f[1:min(len(f), 9)] {
		if i == 3 || i == 4 {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return time.Duration(busy) * 10 * time.Millisecond
}

// seedFailures has each flooder fail once, two at a time (so that nothing
// waits for a hashing slot long enough to be turned away). It returns how many
// flooders failed.
func seedFailures(cd *caddy, n int) int {
	var next, failed atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(n)*time.Second+30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				hc := boundClient(flooderAddr(i), 30*time.Second)
				token, err := loginForm(ctx, hc, cd)
				for try := 0; err == nil && try < 5; try++ {
					var status int
					if status, err = postLogin(ctx, hc, cd, token, "wrong"); err == nil && status == http.StatusUnauthorized {
						failed.Add(1)
						break
					}
				}
				hc.CloseIdleConnections()
			}
		}()
	}
	wg.Wait()
	return int(failed.Load())
}

// jamFlood starts the flooders (each posting wrong passwords from its own
// address until ctx ends, as flood does) and returns once every one has its
// form and has been posting for a moment, or ctx has ended.
func jamFlood(ctx context.Context, cd *caddy, hashed, busy, locked *atomic.Int64) (wait func()) {
	var wg, ready sync.WaitGroup
	for i := range *flooders {
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			defer once.Do(ready.Done)
			hc := boundClient(flooderAddr(i), 0)
			defer hc.CloseIdleConnections()
			token, err := loginForm(ctx, hc, cd)
			once.Do(ready.Done)
			if err != nil {
				return
			}
			for ctx.Err() == nil {
				status, err := postLogin(ctx, hc, cd, token, "wrong")
				if err != nil {
					continue
				}
				switch status {
				case http.StatusUnauthorized:
					hashed.Add(1)
				case http.StatusServiceUnavailable:
					busy.Add(1)
				case http.StatusTooManyRequests:
					locked.Add(1)
				}
			}
		}()
	}
	ready.Wait()
	// Let every flooder's first post reach the queue for a slot.
	select {
	case <-ctx.Done():
	case <-time.After(500 * time.Millisecond):
	}
	return wg.Wait
}

func (r *report) jam() {
	began, load := time.Now(), loadAvg()
	cd := startCaddyApp("memory", map[string]any{"max_attempts": 1_000_000_000, "codes_per_credential": 1_000_000})
	defer cd.stop()
	res := &jamResult{idle: jamCase{name: "idle, all rounds", other: map[string]int{}}, jam: jamCase{name: "flooded, all rounds", other: map[string]int{}}}
	t := time.Now()
	res.seeded = seedFailures(cd, *flooders)
	res.seedTime = time.Since(t)
	addrs := &opAddrs{third: 2 + (*flooders-1)/250}
	res.addrsFirst = fmt.Sprintf("127.0.%d.1", addrs.third)
	pid := cd.cmd.Process.Pid

	samples := func(c *jamCase) {
		t, cpu0, self0, all0 := time.Now(), cpuTime(pid), cpuTime(os.Getpid()), machineBusy()
		for range *jamSamples {
			ip := addrs.next()
			res.addrsLast = ip
			c.add(operatorStep(cd, ip))
		}
		c.secs, c.cpu = time.Since(t).Seconds(), cpuTime(pid)-cpu0
		c.others = max(0, machineBusy()-all0-c.cpu-(cpuTime(os.Getpid())-self0))
	}
	idle := func(round int) {
		c := jamCase{name: fmt.Sprintf("idle #%d", round+1), other: map[string]int{}}
		samples(&c)
		res.cases = append(res.cases, c)
		res.idle.merge(c)
	}
	flooded := func(round int) {
		c := jamCase{name: fmt.Sprintf("flooded #%d", round+1), other: map[string]int{}}
		// Bounded: the flood ends by itself even if a sample hangs; each
		// sample takes at most the 2 s wait for a slot plus its hash.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second+time.Duration(*jamSamples)*5*time.Second)
		var hashed, busy, locked atomic.Int64
		wait := jamFlood(ctx, cd, &hashed, &busy, &locked)
		h0, b0, l0 := hashed.Load(), busy.Load(), locked.Load()
		samples(&c)
		c.hashes, c.busy, c.locked = hashed.Load()-h0, busy.Load()-b0, locked.Load()-l0
		cancel()
		wait()
		res.cases = append(res.cases, c)
		res.jam.merge(c)
	}
	// A case's place in a round biases it: idle first in round 1, flooded
	// first in round 2.
	for round := range 2 {
		if round%2 == 0 {
			idle(round)
			flooded(round)
		} else {
			flooded(round)
			idle(round)
		}
	}
	res.total = time.Since(began)
	res.load = [2]string{load, loadAvg()}
	r.jammed = res
}

// pct is the nearest-rank percentile of sorted.
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func (c jamCase) row(bold bool) string {
	lat := slices.Clone(c.lat)
	slices.Sort(lat)
	n := c.ok + c.refused + c.errors
	name := c.name
	if bold {
		name = "**" + name + "**"
	}
	flood := "–"
	if c.secs > 0 && (c.hashes > 0 || c.busy > 0 || c.locked > 0) {
		flood = fmt.Sprintf("%.1f · %.1f · %.1f", float64(c.hashes)/c.secs, float64(c.busy)/c.secs, float64(c.locked)/c.secs)
	}
	cores, others := "–", "–"
	if c.secs > 0 && c.cpu > 0 {
		cores = fmt.Sprintf("%.2f", c.cpu.Seconds()/c.secs)
		others = fmt.Sprintf("%.2f", c.others.Seconds()/c.secs)
	}
	return fmt.Sprintf("| %s | %d | %d | %d | %d | %s | %s | %s | %s | %s | %s |", name, n, c.ok, c.refused, c.errors,
		ms(pct(lat, 0.5)), ms(pct(lat, 0.9)), ms(pct(lat, 1)), flood, cores, others)
}

func (r *report) printJam(b io.Writer) {
	j := r.jammed
	fmt.Fprintln(b, "\n### Jammed door: the operator's password step during a flood")
	fmt.Fprintf(b, "\n%d flooders (127.0.1.x…), each failed once before the first measurement (%d of %d seeded in %.1f s), max_attempts and codes_per_credential lifted (every operator step issues a code), other app settings at their defaults; "+
		"%d operator steps per case and round, each from a fresh address (%s … %s); 2 rounds, idle first in round 1, flooded first in round 2; bcrypt cost %d; figure took %.0f s; load average %s before, %s after.\n",
		*flooders, j.seeded, *flooders, j.seedTime.Seconds(), *jamSamples, j.addrsFirst, j.addrsLast, *cost, j.total.Seconds(), j.load[0], j.load[1])
	fmt.Fprintln(b, "\n| case | samples | codes issued (303) | refusals (503/429) | errors | p50 ms | p90 ms | max ms | flood: hashes/s · 503/s · 429/s | Caddy CPU (cores) | other processes' CPU (cores) |\n|---|---|---|---|---|---|---|---|---|---|---|")
	for _, c := range j.cases {
		fmt.Fprintln(b, c.row(false))
	}
	fmt.Fprintln(b, j.idle.row(true))
	fmt.Fprintln(b, j.jam.row(true))
	idle, jam := slices.Clone(j.idle.lat), slices.Clone(j.jam.lat)
	slices.Sort(idle)
	slices.Sort(jam)
	ratio, rs := 0.0, "n/a"
	if p := pct(idle, 0.5); p > 0 && len(jam) > 0 {
		ratio = float64(pct(jam, 0.5)) / float64(p)
		rs = fmt.Sprintf("%.2f", ratio)
	}
	met := j.jam.refused == 0 && j.jam.errors == 0 && j.idle.errors == 0 && rs != "n/a" && ratio <= 3
	verdict := "met"
	if !met {
		verdict = "missed"
	}
	fmt.Fprintf(b, "\nRatio flooded p50 / idle p50 (all rounds): **%s**. Target: no refusal and ratio ≤ 3 (at cost 10): **%s** (%d of %d flooded steps refused).\n",
		rs, verdict, j.jam.refused, j.jam.ok+j.jam.refused+j.jam.errors)
	for _, c := range []jamCase{j.idle, j.jam} {
		if len(c.other) > 0 {
			keys := make([]string, 0, len(c.other))
			for k := range c.other {
				keys = append(keys, fmt.Sprintf("%s ×%d", k, c.other[k]))
			}
			slices.Sort(keys)
			fmt.Fprintf(b, "Errors (%s): %s\n", c.name, strings.Join(keys, "; "))
		}
	}
}
