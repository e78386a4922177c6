// Command bench measures, in one run on one Caddy binary built with the
// plugin, what the break_glass guard costs a signed-in request (side by side
// with no guard and with basic_auth), what a flood of sign-ins does to an
// unrelated route (with the hashing cap at its default and lifted), the
// limiter's memory per tracked client, and the operator's own password step
// during a flood (the "jammed door", jam.go). It prints a Markdown report.
//
//	go run ./bench/cmd/bench               # the full run (about 4-5 minutes)
//	go run ./bench/cmd/bench -only jam     # only the jammed-door figure
//	go run ./bench/cmd/bench -smoke        # a tiny run, to keep the tool working
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	password = "correct horse battery staple"
	module   = "github.com/caddy-break-glass/caddy-break-glass"
)

var (
	caddyBin   = flag.String("caddy", os.Getenv("BREAK_GLASS_CADDY"), "Caddy binary with the plugin (default: build one with xcaddy)")
	duration   = flag.Duration("duration", 10*time.Second, "measured time of each pass-through run")
	warmup     = flag.Duration("warmup", 2*time.Second, "unmeasured time before each run")
	conc       = flag.Int("conc", 16, "concurrent clients of each pass-through run")
	flooders   = flag.Int("flooders", 200, "concurrent flooding clients, each from its own loopback address")
	floodTime  = flag.Duration("flood", 10*time.Second, "measured time of each flood run")
	cost       = flag.Int("cost", 10, "bcrypt cost of the benchmark's password")
	smoke      = flag.Bool("smoke", false, "a tiny run that only checks the tool works")
	pprofDir   = flag.String("pprof", "", "save Caddy's CPU profile of each pass-through case and flood in this folder")
	jamSamples = flag.Int("jam-samples", 15, "operator password steps per case (idle, flooded) and round of the jammed-door figure")
	only       = flag.String("only", "", "run only these parts, comma-separated: pass, flood, memory, jam (default: all)")
	workDir    string
	passwdHash string
)

func main() {
	flag.Parse()
	if *smoke {
		*duration, *warmup, *conc, *flooders, *floodTime, *jamSamples = time.Second, 200*time.Millisecond, 2, 8, time.Second, 2
	}
	parts := map[string]bool{"pass": true, "flood": true, "memory": true, "jam": true}
	if *only != "" {
		for k := range parts {
			parts[k] = false
		}
		for _, p := range strings.Split(*only, ",") {
			p = strings.TrimSpace(p)
			if _, ok := parts[p]; !ok {
				fatal(fmt.Errorf("-only: unknown part %q (pass, flood, memory, jam)", p))
			}
			parts[p] = true
		}
	}
	var err error
	if workDir, err = os.MkdirTemp("", "break-glass-bench-"); err != nil {
		fatal(err)
	}
	defer os.RemoveAll(workDir)
	if *caddyBin == "" {
		*caddyBin = buildCaddy()
	}
	out, err := exec.Command(*caddyBin, "hash-password", "--algorithm", "bcrypt", "--bcrypt-cost", strconv.Itoa(*cost), "--plaintext", password).Output()
	if err != nil {
		fatal(fmt.Errorf("caddy hash-password: %v", err))
	}
	passwdHash = strings.TrimSpace(string(out))

	r := report{}
	if parts["pass"] {
		r.passThrough()
	}
	if parts["flood"] {
		r.flood()
	}
	if parts["memory"] {
		r.memory()
	}
	if parts["jam"] {
		r.jam()
	}
	r.print()
}

type report struct {
	runs   []runResult
	floods []floodResult
	mem    []string
	jammed *jamResult
}

// --- Caddy processes ---

type caddy struct {
	cmd   *exec.Cmd
	port  int
	admin string
	log   string
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startCaddy runs one Caddy with the routes the benchmark needs:
// /plain (no guard), /guarded (break_glass), /basic (basic_auth).
func startCaddy(state string, maxHashes int) *caddy {
	app := map[string]any{"max_attempts": 1_000_000_000, "lockout": "1m"}
	if maxHashes > 0 {
		app["max_concurrent_hashes"] = maxHashes
	}
	return startCaddyApp(state, app)
}

// startCaddyApp is startCaddy with the break_glass app's settings as given.
func startCaddyApp(state string, app map[string]any) *caddy {
	c := &caddy{port: freePort(), admin: fmt.Sprintf("127.0.0.1:%d", freePort()), log: filepath.Join(workDir, fmt.Sprintf("caddy-%d.log", time.Now().UnixNano()))}
	cfg := map[string]any{
		"admin":   map[string]any{"listen": c.admin},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "WARN", "writer": map[string]any{"output": "file", "filename": c.log}, "encoder": map[string]any{"format": "json"}}}},
	}
	if state == "storage" {
		app["state"] = "storage"
		cfg["storage"] = map[string]any{"module": "file_system", "root": filepath.Join(workDir, "storage")}
	}
	ok := map[string]any{"handler": "static_response", "body": "ok"}
	route := func(path string, handlers ...any) map[string]any {
		return map[string]any{"match": []any{map[string]any{"path": []string{path}}}, "handle": append(handlers, ok)}
	}
	cfg["apps"] = map[string]any{
		"break_glass": app,
		"http": map[string]any{"servers": map[string]any{"bench": map[string]any{
			"listen":          []string{fmt.Sprintf("127.0.0.1:%d", c.port)},
			"automatic_https": map[string]any{"disable": true},
			"routes": []any{
				route("/plain"),
				// A control: the cheapest middleware Caddy has, to tell the
				// cost of any extra handler from the guard's own.
				route("/noop*", map[string]any{"handler": "vars", "bench": "1"}),
				route("/guarded*", map[string]any{"handler": "break_glass", "email": "ops@example.com", "hash": passwdHash,
					"allowed_ips": []string{"127.0.0.0/8"}, "dev_log_code": true}),
				route("/basic*", map[string]any{"handler": "authentication", "providers": map[string]any{"http_basic": map[string]any{
					"accounts": []any{map[string]any{"username": "bench", "password": passwdHash}}, "hash": map[string]any{"algorithm": "bcrypt"},
					"hash_cache": map[string]any{}}}}),
			},
		}}},
	}
	b, _ := json.Marshal(cfg)
	path := filepath.Join(workDir, fmt.Sprintf("caddy-%d.json", c.port))
	if err := os.WriteFile(path, b, 0o600); err != nil {
		fatal(err)
	}
	c.cmd = exec.Command(*caddyBin, "run", "--config", path)
	logf, _ := os.Create(c.log + ".stderr")
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if err := c.cmd.Start(); err != nil {
		fatal(err)
	}
	for range 200 {
		if conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", c.port)); err == nil {
			conn.Close()
			return c
		}
		time.Sleep(50 * time.Millisecond)
	}
	fatal(fmt.Errorf("caddy did not start; see %s", c.log))
	return nil
}

func (c *caddy) stop() {
	_ = c.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
	}
}

func (c *caddy) url(path string) string { return fmt.Sprintf("http://127.0.0.1:%d%s", c.port, path) }

// profile, with -pprof, saves Caddy's CPU profile over the next d (in the
// background) as <name>.pprof.
func (c *caddy) profile(name string, d time.Duration) (wait func()) {
	if *pprofDir == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", c.admin, int(d.Seconds())))
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: profile:", err)
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(filepath.Join(*pprofDir, name+".pprof"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: profile:", err)
			return
		}
		defer f.Close()
		_, _ = io.Copy(f, resp.Body)
	}()
	return func() { <-done }
}

// signIn runs the break-glass flow from 127.0.0.1 and returns the session
// cookie, reading the code from the log (dev_log_code).
func (c *caddy) signIn() *http.Cookie {
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	tokenRE := regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)
	token := func() string {
		resp, err := hc.Get(c.url("/guarded/"))
		if err != nil {
			fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		m := tokenRE.FindSubmatch(b)
		if m == nil {
			fatal(fmt.Errorf("no form at /guarded/ (%d)", resp.StatusCode))
		}
		return string(m[1])
	}
	post := func(v url.Values) {
		resp, err := hc.PostForm(c.url("/guarded/"), v)
		if err != nil {
			fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusSeeOther {
			fatal(fmt.Errorf("sign-in step %s: %d", v.Get("break_glass_step"), resp.StatusCode))
		}
	}
	post(url.Values{"break_glass_step": {"login"}, "csrf_token": {token()}, "email": {"ops@example.com"}, "password": {password}})
	var code string
	for range 100 {
		if code = lastCode(c.log); code != "" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	post(url.Values{"break_glass_step": {"code"}, "csrf_token": {token()}, "code": {code}})
	u, _ := url.Parse(c.url("/"))
	for _, ck := range jar.Cookies(u) {
		if ck.Name == "break_glass_session" {
			return ck
		}
	}
	fatal(errors.New("no session cookie after signing in"))
	return nil
}

func lastCode(logPath string) string {
	f, err := os.Open(logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	var code string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) == nil && l["msg"] == "break-glass code (dev_log_code)" {
			code, _ = l["code"].(string)
		}
	}
	return code
}

// --- load ---

type runResult struct {
	name     string
	rps      float64
	p50, p99 time.Duration
	errors   int64
}

// loadN runs n clients doing GET target for d (after the warm-up) and
// returns throughput and latency percentiles of the 200 answers.
func loadN(name, target string, setup func(*http.Request), n int, d time.Duration) runResult {
	var measuring atomic.Bool
	var errs atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), *warmup+d)
	defer cancel()
	lat := make([][]time.Duration, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			req, _ := http.NewRequest("GET", target, nil)
			if setup != nil {
				setup(req)
			}
			<-start
			for ctx.Err() == nil {
				t := time.Now()
				resp, err := hc.Do(req.WithContext(ctx))
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if !measuring.Load() {
					continue
				}
				if err != nil || resp.StatusCode != 200 {
					if ctx.Err() == nil {
						errs.Add(1)
					}
					continue
				}
				lat[i] = append(lat[i], time.Since(t))
			}
		}()
	}
	close(start)
	time.Sleep(*warmup)
	measuring.Store(true)
	began := time.Now()
	wg.Wait()
	elapsed := time.Since(began)
	all := slices.Concat(lat...)
	slices.Sort(all)
	res := runResult{name: name, errors: errs.Load()}
	if len(all) > 0 {
		res.rps = float64(len(all)) / elapsed.Seconds()
		res.p50, res.p99 = all[len(all)/2], all[len(all)*99/100]
	}
	return res
}

func (r *report) passThrough() {
	mem := startCaddy("memory", 0)
	cookie := mem.signIn()
	withCookie := func(req *http.Request) { req.AddCookie(cookie) }
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("bench:"+password))
	withBasic := func(req *http.Request) { req.Header.Set("Authorization", basic) }
	// Interleaved twice, so that drift over the run hits every case alike.
	// The unguarded requests carry the same cookie, so that the difference
	// is the guard's work, not the bytes of a header.
	for round := range 2 {
		for _, c := range []struct {
			name  string
			path  string
			setup func(*http.Request)
		}{{"a: unguarded", "/plain", withCookie}, {"b: break_glass, session", "/guarded/x", withCookie}, {"c: basic_auth (bcrypt, cached)", "/basic/x", withBasic}, {"e: a no-op handler (vars)", "/noop/x", withCookie}} {
			stop := func() {}
			if round == 0 {
				stop = mem.profile(strings.Fields(c.name)[0]+strings.TrimSuffix(strings.Fields(c.name)[1], ","), *warmup+*duration)
			}
			res := loadN(c.name, mem.url(c.path), c.setup, *conc, *duration)
			stop()
			res.name = fmt.Sprintf("%s #%d", res.name, round+1)
			r.runs = append(r.runs, res)
		}
	}
	mem.stop()

	st := startCaddy("storage", 0)
	cookie = st.signIn()
	for round := range 2 {
		res := loadN("a: unguarded (storage instance)", st.url("/plain"), func(req *http.Request) { req.AddCookie(cookie) }, *conc, *duration)
		res.name = fmt.Sprintf("%s #%d", res.name, round+1)
		r.runs = append(r.runs, res)
		res = loadN("d: break_glass state storage, session", st.url("/guarded/x"), func(req *http.Request) { req.AddCookie(cookie) }, *conc, *duration)
		res.name = fmt.Sprintf("%s #%d", res.name, round+1)
		r.runs = append(r.runs, res)
	}
	st.stop()
}

// --- flood ---

type floodResult struct {
	name                 string
	idle, flooded        runResult
	hashesPerSec         float64
	busyPerSec, lockedPS float64
}

func (r *report) flood() {
	for _, c := range []struct {
		name string
		cap  int
	}{{fmt.Sprintf("default cap (%d on %d CPUs)", max(1, runtime.NumCPU()/2), runtime.NumCPU()), 0}, {"cap lifted (1000)", 1000}} {
		cd := startCaddy("memory", c.cap)
		fr := floodResult{name: c.name}
		fr.idle = loadN("unrelated route, idle", cd.url("/plain"), nil, 4, *floodTime)
		var hashed, busy, locked atomic.Int64
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for i := range *flooders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				flood(ctx, cd, fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250), &hashed, &busy, &locked)
			}()
		}
		time.Sleep(time.Second) // every flooder has its form
		h0, b0, l0 := hashed.Load(), busy.Load(), locked.Load()
		began := time.Now()
		stop := cd.profile(fmt.Sprintf("flood-cap-%d", c.cap), *floodTime)
		fr.flooded = loadN("unrelated route, flooded", cd.url("/plain"), nil, 4, *floodTime)
		stop()
		secs := time.Since(began).Seconds()
		fr.hashesPerSec = float64(hashed.Load()-h0) / secs
		fr.busyPerSec = float64(busy.Load()-b0) / secs
		fr.lockedPS = float64(locked.Load()-l0) / secs
		cancel()
		wg.Wait()
		cd.stop()
		r.floods = append(r.floods, fr)
	}
}

// flood posts wrong passwords from one loopback address until ctx ends.
func flood(ctx context.Context, cd *caddy, ip string, hashed, busy, locked *atomic.Int64) {
	jar, _ := cookiejar.New(nil)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	hc := &http.Client{Jar: jar, Transport: &http.Transport{DialContext: d.DialContext}}
	req, _ := http.NewRequestWithContext(ctx, "GET", cd.url("/guarded/"), nil)
	resp, err := hc.Do(req)
	if err != nil {
		return
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`name="csrf_token" value="([^"]+)"`).FindSubmatch(b)
	if m == nil {
		return
	}
	form := url.Values{"break_glass_step": {"login"}, "csrf_token": {string(m[1])}, "email": {"ops@example.com"}, "password": {"wrong"}}.Encode()
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, "POST", cd.url("/guarded/"), strings.NewReader(form))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := hc.Do(req)
		if err != nil {
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			hashed.Add(1)
		case http.StatusServiceUnavailable:
			busy.Add(1)
		case http.StatusTooManyRequests:
			locked.Add(1)
		}
	}
}

// --- memory ---

func (r *report) memory() {
	root, _ := os.Getwd()
	args := []string{"test", "-run", "^$", "-bench", "^BenchmarkLimiterMemory$", "-benchtime", "1x", "."}
	if *smoke {
		args[4] = "^BenchmarkLimiterMemory/10000$"
	}
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		fatal(fmt.Errorf("go test -bench LimiterMemory in %s: %v\n%s", root, err, out))
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "BenchmarkLimiterMemory/") {
			f := strings.Fields(l)
			name := strings.TrimSuffix(strings.TrimPrefix(f[0], "BenchmarkLimiterMemory/"), fmt.Sprintf("-%d", runtime.GOMAXPROCS(0)))
			r.mem = append(r.mem, fmt.Sprintf("| %s | %s |", name, f[len(f)-2]))
		}
	}
}

// --- report ---

func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d)/float64(time.Millisecond)) }

func (r *report) print() {
	var b bytes.Buffer
	cpu := "unknown"
	if f, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(f), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	goVer, _ := exec.Command("go", "version").Output()
	caddyVer, _ := exec.Command(*caddyBin, "version").Output()
	fmt.Fprintf(&b, "Machine: %d CPUs (%s); %s; Caddy %s\n", runtime.NumCPU(), cpu, strings.TrimSpace(string(goVer)), strings.Fields(string(caddyVer) + " ?")[0])
	fmt.Fprintf(&b, "Settings: %d clients × %v per pass-through run (after %v warm-up), each run twice, interleaved; flood: %d clients × %v, bcrypt cost %d\n\n", *conc, *duration, *warmup, *flooders, *floodTime, *cost)

	if len(r.runs) > 0 {
		r.printPassThrough(&b)
	}
	if len(r.floods) > 0 {
		r.printFlood(&b)
	}
	if len(r.mem) > 0 {
		fmt.Fprintln(&b, "\n### Memory per tracked client (limiter, heap)")
		fmt.Fprintln(&b, "\n| clients | bytes/client |\n|---|---|")
		for _, m := range r.mem {
			fmt.Fprintln(&b, m)
		}
	}
	if r.jammed != nil {
		r.printJam(&b)
	}
	os.Stdout.Write(b.Bytes())
}

func (r *report) printPassThrough(b *bytes.Buffer) {
	fmt.Fprintln(b, "### Pass-through (a signed-in request)")
	fmt.Fprintln(b, "\n| run | requests/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|")
	sum := map[string]float64{}
	for _, x := range r.runs {
		fmt.Fprintf(b, "| %s | %.0f | %s | %s | %d |\n", x.name, x.rps, ms(x.p50), ms(x.p99), x.errors)
		sum[strings.SplitN(x.name, " #", 2)[0]] += x.rps
	}
	ratio := func(x, y string) string {
		if sum[y] == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.3f", sum[x]/sum[y])
	}
	fmt.Fprintf(b, "\nRatios of requests/s (both rounds): **b/a = %s**, **c/a = %s**, **d/a = %s** (d against the unguarded route of its own instance); control: e/a = %s, so the guard's own share is b/e = %s.\n\n",
		ratio("b: break_glass, session", "a: unguarded"), ratio("c: basic_auth (bcrypt, cached)", "a: unguarded"),
		ratio("d: break_glass state storage, session", "a: unguarded (storage instance)"),
		ratio("e: a no-op handler (vars)", "a: unguarded"), ratio("b: break_glass, session", "e: a no-op handler (vars)"))
}

func (r *report) printFlood(b *bytes.Buffer) {
	fmt.Fprintln(b, "### Flood: an unrelated route while clients post wrong passwords")
	fmt.Fprintln(b, "\n| hashing cap | idle p50 ms | idle p99 ms | flooded p50 ms | flooded p99 ms | p99 flooded/idle | hashes/s | 503/s | 429/s |\n|---|---|---|---|---|---|---|---|---|")
	for _, f := range r.floods {
		q := 0.0
		if f.idle.p99 > 0 {
			q = float64(f.flooded.p99) / float64(f.idle.p99)
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %.2f | %.1f | %.1f | %.1f |\n", f.name, ms(f.idle.p50), ms(f.idle.p99), ms(f.flooded.p50), ms(f.flooded.p99), q, f.hashesPerSec, f.busyPerSec, f.lockedPS)
	}
}

// --- building ---

func buildCaddy() string {
	root, _ := os.Getwd()
	out := filepath.Join(workDir, "caddy")
	gopath, _ := exec.Command("go", "env", "GOPATH").Output()
	xcaddy := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "xcaddy")
	if _, err := os.Stat(xcaddy); err != nil {
		inst := exec.Command("go", "install", "github.com/caddyserver/xcaddy/cmd/xcaddy@v0.4.5")
		inst.Stdout, inst.Stderr = os.Stderr, os.Stderr
		if err := inst.Run(); err != nil {
			fatal(err)
		}
	}
	proxy, _ := exec.Command("go", "env", "GOPROXY").Output()
	first, _, _ := strings.Cut(strings.TrimSpace(string(proxy)), ",")
	cmd := exec.Command(xcaddy, "build", "v2.11.9", "--with", module+"="+root, "--output", out)
	cmd.Env = append(os.Environ(), "GOPROXY="+first+"|off")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	fmt.Fprintln(os.Stderr, "bench: building Caddy with xcaddy")
	if err := cmd.Run(); err != nil {
		fatal(err)
	}
	return out
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}
