package breakglass

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

const bobPassword = "bob's own long passphrase"

// argon2idOf hashes pw with the parameters `caddy hash-password --algorithm
// argon2id` uses by default (those of Caddy's own fake hash).
func argon2idOf(t testing.TB, pw string) string {
	t.Helper()
	params, _, err := caddyauth.DecodeHash(caddyauth.Argon2idHash{}.FakeHash())
	if err != nil {
		t.Fatal(err)
	}
	b, err := params.Hash([]byte(pw))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var argonOnce sync.Map

// argonHash is an argon2id hash of bobPassword, made once.
func argonHash(t testing.TB) string {
	if v, ok := argonOnce.Load("bob"); ok {
		return v.(string)
	}
	v, _ := argonOnce.LoadOrStore("bob", argon2idOf(t, bobPassword))
	return v.(string)
}

// hashLog records the hash of every comparison a handler makes.
type hashLog struct {
	mu     sync.Mutex
	hashes []string
}

func (l *hashLog) compare(hash, pw []byte) error {
	l.mu.Lock()
	l.hashes = append(l.hashes, string(hash))
	l.mu.Unlock()
	return compareHash(hash, pw)
}

func (l *hashLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.hashes
	l.hashes = nil
	return out
}

// twoAccounts is a handler with alice (bcrypt) and bob (argon2id).
func twoAccounts(t *testing.T, app *App, mod func(*Handler)) (testHandler, *hashLog) {
	hl := &hashLog{}
	h := newTestHandler(t, app, func(h *Handler) {
		h.Email, h.Hash = "", ""
		h.Accounts = []AccountConfig{
			{Email: "alice@example.com", Hash: testHash(t, 5)},
			{Email: "bob@example.com", Hash: argonHash(t), SentinelID: "-1"},
		}
		h.compare = hl.compare
		if mod != nil {
			mod(h)
		}
	})
	return h, hl
}

var codeFor = regexp.MustCompile(`^\d{6}$`)

// signInAs runs the flow as one account, reading its code from the log.
func signInAs(t *testing.T, h testHandler, c *bgtest.Client, email, password string) bgtest.Reply {
	t.Helper()
	return c.SignIn("/admin/", email, password, func() string {
		code := devCode(t, h)
		if !codeFor.MatchString(code) {
			t.Fatalf("code %q", code)
		}
		return code
	})
}

func TestTwoAccountsEachSignInAsThemselves(t *testing.T) {
	h, _ := twoAccounts(t, nil, nil)
	bobLogins := metricAccountEvents.WithLabelValues("bob@example.com", eventLogin)
	before := testutil.ToFloat64(bobLogins)
	alice, bob := h.client(t, "192.0.2.1"), h.client(t, "192.0.2.2")
	if r := signInAs(t, h, alice, "alice@example.com", testPassword); r.Status != http.StatusSeeOther {
		t.Fatalf("alice: %d %s", r.Status, r.Body)
	}
	if r := signInAs(t, h, bob, "bob@example.com", bobPassword); r.Status != http.StatusSeeOther {
		t.Fatalf("bob: %d %s", r.Status, r.Body)
	}
	for c, want := range map[*bgtest.Client]string{alice: "upstream id=alice@example.com ", bob: "upstream id=bob@example.com "} {
		if r := c.Get("/admin/"); !strings.HasPrefix(r.Body, want) {
			t.Errorf("%s: upstream saw %q, want %q…", c.Name, r.Body, want)
		}
	}
	// Each code went to its own account: the dev log names the account.
	var to []string
	for _, l := range h.logLines(t, "break-glass code (dev_log_code)") {
		to = append(to, l["email"].(string))
	}
	if !slices.Equal(to, []string{"alice@example.com", "bob@example.com"}) {
		t.Errorf("codes went to %q", to)
	}
	if n := testutil.ToFloat64(bobLogins) - before; n != 1 {
		t.Errorf("account_events_total{account=bob, event=login} grew by %v, want 1", n)
	}
}

func TestAnUnknownEmailAWrongPasswordAndAnotherAccountsPasswordCostAlike(t *testing.T) {
	h, hl := twoAccounts(t, &App{MaxAttempts: 100}, nil)
	c := h.client(t, "192.0.2.1")
	type answer struct {
		status int
		hashes []string
		page   string
	}
	// What differs by design: the CSRF token, the attempts left, the email
	// typed (shown back in the form).
	csrf, left := regexp.MustCompile(`value="[^"]{20,}"`), regexp.MustCompile(`\d+ attempts left`)
	try := func(email, password string) answer {
		r := c.Login("/admin/", email, password, "", nil)
		page := left.ReplaceAllString(csrf.ReplaceAllString(r.Body, ""), "")
		page = strings.ReplaceAll(page, email, "EMAIL")
		return answer{r.Status, hl.take(), page}
	}
	hl.take()
	cases := map[string]answer{
		"unknown email":                 try("nobody@example.com", testPassword),
		"wrong password of alice":       try("alice@example.com", "wrong"),
		"bob's password, alice's email": try("alice@example.com", bobPassword),
		"alice's password, bob's email": try("bob@example.com", testPassword),
	}
	var first *answer
	for name, a := range cases {
		if a.status != http.StatusUnauthorized {
			t.Errorf("%s: status %d", name, a.status)
		}
		// One comparison per kind of hash (bcrypt, argon2id), in order.
		if len(a.hashes) != 2 || !strings.HasPrefix(a.hashes[0], "$2") || !strings.HasPrefix(a.hashes[1], "$argon2id$") {
			t.Errorf("%s: compared %d hashes: %.20q", name, len(a.hashes), a.hashes)
		}
		if first == nil {
			first = &a
		} else if a.page != first.page {
			t.Errorf("%s: the page differs from the others", name)
		}
	}
}

func TestChangingOneAccountsHashEndsOnlyItsSessionsAndCodes(t *testing.T) {
	app := &App{MaxAttempts: 10}
	h, _ := twoAccounts(t, app, nil)
	alice, bob := h.client(t, "192.0.2.1"), h.client(t, "192.0.2.2")
	signInAs(t, h, alice, "alice@example.com", testPassword)
	signInAs(t, h, bob, "bob@example.com", bobPassword)
	// And a code pending for each.
	aliceCode, bobCode := h.client(t, "192.0.2.3"), h.client(t, "192.0.2.4")
	codes := map[*bgtest.Client]string{}
	for _, who := range []struct {
		c         *bgtest.Client
		email, pw string
	}{{aliceCode, "alice@example.com", testPassword}, {bobCode, "bob@example.com", bobPassword}} {
		if r := who.c.Login("/admin/", who.email, who.pw, "", nil); r.Status != http.StatusSeeOther {
			t.Fatalf("%s: %d", who.email, r.Status)
		}
		codes[who.c] = devCode(t, h)
	}

	// The same app and state, bob's hash changed (a new argon2id hash).
	newBob := argon2idOf(t, "bob's new passphrase")
	h2, _ := twoAccounts(t, app, func(h *Handler) { h.Accounts[1].Hash = newBob })
	if r := h2.clientWith(t, bobCode, upstream).SubmitCode("/admin/", codes[bobCode]); r.Status == http.StatusSeeOther {
		t.Error("bob's code outlived his hash")
	}
	if r := h2.clientWith(t, aliceCode, upstream).SubmitCode("/admin/", codes[aliceCode]); r.Status != http.StatusSeeOther {
		t.Errorf("alice's code ended with bob's hash: %d", r.Status)
	}
	alice2, bob2 := h2.clientWith(t, alice, upstream), h2.clientWith(t, bob, upstream)
	if r := alice2.Get("/admin/"); r.Header.Get("X-Upstream") != "reached" {
		t.Errorf("alice's session ended with bob's hash: %d", r.Status)
	}
	if r := bob2.Get("/admin/"); r.Header.Get("X-Upstream") == "reached" {
		t.Error("bob's session outlived his hash")
	}
}

func TestAlertDeliveryLinesNameTheAccountAndTheEvent(t *testing.T) {
	hook := bgtest.StartWebhook(t)
	app := &App{MaxAttempts: 10}
	h, _ := twoAccounts(t, app, func(h *Handler) {
		h.AlertWebhook, h.AlertOn, h.RequireAlert = hook.URL, []string{"login", "code_issued"}, true
	})
	// The login's alert is confirmed (require_alert), the code's is sent.
	if r := signInAs(t, h, h.client(t, "192.0.2.1"), "bob@example.com", bobPassword); r.Status != http.StatusSeeOther {
		t.Fatalf("bob: %d %s", r.Status, r.Body)
	}
	code := devCode(t, h)
	// A second code in the window: its alert is held back.
	h.client(t, "192.0.2.2").Login("/admin/", "bob@example.com", bobPassword, "", nil)
	app.state.deliveries.close(time.Minute) // every delivery has logged
	app.state.notices.close(time.Minute)

	logs := h.logs.Logs()
	for _, event := range []string{eventCodeIssued, eventLogin} {
		if logs.Find("break-glass delivery succeeded", map[string]string{"channel": "webhook", "event": event, "email": "bob@example.com"}) == nil {
			t.Errorf("no delivery line names bob and %s: %v", event, logs.All("break-glass delivery succeeded"))
		}
	}
	held := logs.All("break-glass code_issued alert held back: one already went for this credential in this window; the next one will count it")
	if len(held) != 1 || held[0]["email"] != "bob@example.com" {
		t.Errorf("held-back lines %v, want one naming bob", held)
	}
	for _, l := range append(logs.All("break-glass delivery succeeded"), held...) {
		line := fmt.Sprint(l)
		if strings.Contains(line, code) || strings.Contains(line, bobPassword) || strings.Contains(line, argonHash(t)) {
			t.Errorf("a delivery line shows a secret: %v", l)
		}
	}
}

func TestMaxUsesAndTOTPAreCountedPerAccount(t *testing.T) {
	secret := "JBSWY3DPEHPK3PXP"
	h, _ := twoAccounts(t, nil, func(h *Handler) {
		h.Accounts[0].MaxUses = 1
		h.Accounts[0].TOTPSecret = secret
		h.Accounts[1].TOTPSecret = secret
	})
	if r := signInAs(t, h, h.client(t, "192.0.2.1"), "alice@example.com", testPassword); r.Status != http.StatusSeeOther {
		t.Fatalf("alice's one use: %d", r.Status)
	}
	// alice is spent, bob is not; the page says so only to alice's password.
	if r := h.client(t, "192.0.2.3").Login("/admin/", "alice@example.com", testPassword, "", nil); r.Status != http.StatusForbidden || !strings.Contains(r.Body, "max_uses") {
		t.Errorf("alice after her max_uses: %d", r.Status)
	}
	if r := h.client(t, "192.0.2.4").Login("/admin/", "alice@example.com", "wrong", "", nil); r.Status != http.StatusUnauthorized {
		t.Errorf("a wrong password for the spent account: %d, want 401 as for any", r.Status)
	}
	// One TOTP step works once per account: alice's use of it is not
	// bob's. On a handler of its own, without max_uses, and a clock that
	// stays in one step.
	useTestClock(t)
	h, _ = twoAccounts(t, nil, func(h *Handler) {
		h.Accounts[0].TOTPSecret = secret
		h.Accounts[1].TOTPSecret = secret
	})
	key, err := decodeTOTPSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	code := hotp(key, uint64(totpStep(now())), 6)
	ip := 10
	for _, who := range []struct{ email, pw string }{{"alice@example.com", testPassword}, {"bob@example.com", bobPassword}} {
		for i, want := range []int{http.StatusSeeOther, http.StatusUnauthorized} {
			ip++
			c := h.client(t, fmt.Sprintf("192.0.2.%d", ip))
			if r := c.Login("/admin/", who.email, who.pw, "", nil); r.Status != http.StatusSeeOther {
				t.Fatalf("%s: %d", who.email, r.Status)
			}
			if r := c.SubmitCode("/admin/", code); r.Status != want {
				t.Errorf("%s with the TOTP step, use %d: %d, want %d", who.email, i+1, r.Status, want)
			}
		}
	}
}

// A salt (16 bytes) and a key (32 bytes) in base64 that shows "s3cr3t".
const (
	s3cr3tSalt = "s3cr3tAAAAAAAAAAAAAAAA"
	s3cr3tKey  = "s3cr3tAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
)

func TestABadHashIsRefusedAtLoadNamingTheAccountNotTheValue(t *testing.T) {
	for name, hash := range map[string]string{
		"not a hash":       "s3cr3t-value",
		"broken bcrypt":    "$2a$10$s3cr3t",
		"broken argon2id":  "$argon2id$v=19$m=s3cr3t,t=1,p=1$abc$def",
		"unknown argon2":   "$argon2i$v=19$m=65536,t=1,p=1$s3cr3t$s3cr3t",
		"scrypt-like PHC":  "$scrypt$ln=16,r=8,p=1$s3cr3t$s3cr3t",
		"wrong argon2 ver": "$argon2id$v=18$m=65536,t=1,p=1$s3cr3t$s3cr3t",
		// bcrypt.Cost takes these, yet none can sign in: the first fails to
		// compare at once (its account would answer faster than an unknown
		// email), the second never matches, and $2x$ is crypt_blowfish's
		// buggy variant, which Go's bcrypt reads as $2a$.
		"bcrypt outside its alphabet": "$2a$12$s3cr3t" + strings.Repeat("!", 47),
		"bcrypt too long":             "$2a$12$s3cr3t" + strings.Repeat("a", 52),
		"bcrypt $2x$":                 "$2x$12$s3cr3t" + strings.Repeat("a", 47),
		// DecodeHash takes these; argon2 panics on them (no rounds, no
		// lanes, no key), or they are no defence (no salt, a short key).
		"argon2id t=0":       "$argon2id$v=19$m=65536,t=0,p=1$" + s3cr3tSalt + "$" + s3cr3tKey,
		"argon2id p=0":       "$argon2id$v=19$m=65536,t=1,p=0$" + s3cr3tSalt + "$" + s3cr3tKey,
		"argon2id no key":    "$argon2id$v=19$m=65536,t=1,p=1$" + s3cr3tSalt + "$",
		"argon2id short key": "$argon2id$v=19$m=65536,t=1,p=1$" + s3cr3tSalt + "$s3cr3tAAAAAAAAAAAAAA",
		"argon2id no salt":   "$argon2id$v=19$m=65536,t=1,p=1$$" + s3cr3tKey,
		// DecodeHash takes the numbers without their names; m would then
		// not be counted against max_hash_memory.
		"argon2id unnamed parameters": "$argon2id$v=19$65536,1,1$" + s3cr3tSalt + "$" + s3cr3tKey,
	} {
		t.Run(name, func(t *testing.T) {
			h := &Handler{Accounts: []AccountConfig{{Email: "alice@example.com", Hash: testHash(t, 5)}, {Email: "bob@example.com", Hash: hash}}, DevLogCode: true}
			err := h.setup(testApp(t), zapNop())
			if err == nil || !strings.Contains(err.Error(), "account bob@example.com: hash") || strings.Contains(err.Error(), "s3cr3t") {
				t.Fatalf("error %v", err)
			}
		})
	}
}

func TestBcryptHashesOfEachPrefixThatGoReadsAlikeLoadAndMatch(t *testing.T) {
	for _, prefix := range []string{"$2a$", "$2b$", "$2y$"} {
		hash := prefix + strings.TrimPrefix(testHash(t, 5), "$2a$")
		b, _, err := parseHash(hash)
		if err != nil {
			t.Fatalf("%s: %v", prefix, err)
		}
		if err := compareHash(b, []byte(testPassword)); err != nil {
			t.Errorf("%s: %v", prefix, err)
		}
	}
}

func TestAccountsAreCheckedAtLoad(t *testing.T) {
	for name, tc := range map[string]struct {
		h    Handler
		want string
	}{
		"both forms":    {Handler{Email: "a@example.com", Hash: "x", Accounts: []AccountConfig{{Email: "b@example.com"}}}, "not both"},
		"twice":         {Handler{Accounts: []AccountConfig{{Email: "a@example.com", Hash: "$2a$05$"}, {Email: "A@example.com", Hash: "$2a$05$"}}}, "account A@example.com: given twice"},
		"no email":      {Handler{Accounts: []AccountConfig{{Hash: "x"}}}, "account 1: email: required"},
		"bad sentinel":  {Handler{Accounts: []AccountConfig{{Email: "a@example.com", SentinelID: "a\nb"}}}, "sentinel_id"},
		"negative uses": {Handler{Accounts: []AccountConfig{{Email: "a@example.com", MaxUses: -1}}}, "max_uses"},
	} {
		t.Run(name, func(t *testing.T) {
			h := tc.h
			h.DevLogCode = true
			for i := range h.Accounts {
				if h.Accounts[i].Hash != "x" {
					h.Accounts[i].Hash = testHash(t, 5)
				}
			}
			if err := h.setup(testApp(t), zapNop()); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
		})
	}
}

func TestArgon2idMemoryCountsAgainstMaxHashMemory(t *testing.T) {
	app := &App{MaxHashMemory: 16 << 20}
	h := &Handler{Accounts: []AccountConfig{{Email: "bob@example.com", Hash: argonHash(t)}}, DevLogCode: true}
	if err := h.setup(testApp(t, app), zapNop()); err == nil || !strings.Contains(err.Error(), "46 MiB") {
		t.Fatalf("an argon2id hash over max_hash_memory: %v", err)
	}
	// The gate: a waiter whose memory does not fit waits, first in line.
	g := newHashGate(4, 100)
	if !g.acquire(context.Background(), 0, 60, time.Second) {
		t.Fatal("first")
	}
	if g.acquire(context.Background(), 0, 60, 10*time.Millisecond) {
		t.Fatal("a second 60 of 100 was let in")
	}
	done := make(chan bool)
	go func() { done <- g.acquire(context.Background(), 0, 60, time.Minute) }()
	time.Sleep(10 * time.Millisecond)
	g.release(60)
	if !<-done {
		t.Fatal("the waiter was not served once the memory was back")
	}
}

func TestAnArgon2idHashOverMaxHashMemoryIsRefusedBeforeItsMemoryIsTaken(t *testing.T) {
	for name, kib := range map[string]uint64{"1GiB": 1 << 20, "8GiB": 8 << 20} {
		t.Run(name, func(t *testing.T) {
			hash := fmt.Sprintf("$argon2id$v=19$m=%d,t=1,p=1$%s$%s", kib, s3cr3tSalt, s3cr3tKey)
			h := &Handler{Accounts: []AccountConfig{{Email: "bob@example.com", Hash: hash}}, DevLogCode: true}
			app := testApp(t)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			err := h.setup(app, zapNop())
			runtime.ReadMemStats(&after)
			want := fmt.Sprintf("accounts: an argon2id hash takes %d MiB per comparison, more than max_hash_memory (256 MiB)", kib>>10)
			if err == nil || err.Error() != want {
				t.Fatalf("error %v, want %q", err, want)
			}
			// Refused before anything was hashed with it: the fake hash of
			// its class would have taken its m.
			if took := after.TotalAlloc - before.TotalAlloc; took > 64<<20 {
				t.Errorf("loading took %d MiB before refusing the hash", took>>20)
			}
		})
	}
}

func TestTheSentinelIDReachesTheUpstream(t *testing.T) {
	h, _ := twoAccounts(t, nil, nil)
	for _, who := range []struct{ ip, email, pw, want string }{
		{"192.0.2.1", "alice@example.com", testPassword, "0"},
		{"192.0.2.2", "bob@example.com", bobPassword, "-1"},
	} {
		c := h.client(t, who.ip)
		signInAs(t, h, c, who.email, who.pw)
		var got string
		c = h.clientWith(t, c, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			got, _ = r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).GetString("http.auth.user.sentinel_id")
			return nil
		}))
		if c.Get("/admin/"); got != who.want {
			t.Errorf("%s: sentinel %q, want %q", who.email, got, who.want)
		}
	}
}

// clientWith is a client of h with the cookies of old, in front of next.
func (h testHandler) clientWith(t *testing.T, old *bgtest.Client, next caddyhttp.Handler) *bgtest.Client {
	srv := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
		if err := h.ServeHTTP(w, r, next); err != nil {
			t.Errorf("%s %s: %v", r.Method, r.URL, err)
		}
	})
	c := bgtest.New(t, bgtest.HandlerTransport(srv, old.Name+":40000"), old.Base)
	c.Name = old.Name
	u, _ := url.Parse(old.Base + "/admin/")
	c.Jar().SetCookies(u, old.Jar().Cookies(u))
	return c
}

// logLines are the handler's log entries with message msg, as maps.
func (h testHandler) logLines(t *testing.T, msg string) []map[string]any {
	return h.logs.Logs().All(msg)
}

// testApp is a provisioned app (its defaults, or app's settings).
func testApp(t *testing.T, app ...*App) *App {
	a := &App{}
	if len(app) > 0 {
		a = app[0]
	}
	if err := a.setup(zap.NewNop(), nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Cleanup() })
	return a
}

func zapNop() *zap.Logger { return zap.NewNop() }

func TestAccountBlocksInTheCaddyfile(t *testing.T) {
	var h Handler
	d := caddyfile.NewTestDispenser(`break_glass {
		account alice@example.com {
			hash {env.BG_ALICE_HASH}
			totp_secret {env.BG_ALICE_TOTP}
			max_uses 1
		}
		account bob@example.com {
			hash {env.BG_BOB_HASH}
			sentinel_id -1
		}
	}`)
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	want := []AccountConfig{
		{Email: "alice@example.com", Hash: "{env.BG_ALICE_HASH}", TOTPSecret: "{env.BG_ALICE_TOTP}", MaxUses: 1},
		{Email: "bob@example.com", Hash: "{env.BG_BOB_HASH}", SentinelID: "-1"},
	}
	if !reflect.DeepEqual(h.Accounts, want) {
		t.Fatalf("accounts %+v, want %+v", h.Accounts, want)
	}
	for input, msg := range map[string]string{
		`break_glass { account { hash x } }`:                       "account: needs the account's email",
		`break_glass { account a@example.com b { hash x } }`:       "takes one email",
		`break_glass { account a@example.com { } }`:                "account a@example.com: needs a hash",
		"break_glass { account a@example.com {\nhash x\npw y\n} }": `unknown option "pw"`,
		`break_glass { account a@example.com { max_uses 0 } }`:     "max_uses",
	} {
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: error %v, want %q", input, err, msg)
		}
	}
}

// TestTwoAccountsOnARunningCaddyThroughJSON loads two accounts through JSON
// (as POST /load would) on a running Caddy with an audit log: each signs
// in with its own code mail, every alert and audit line names its account,
// the status lists both, revoke --email ends one account's session only,
// and the drill sends a code-delivery test to each account's address.
func TestTwoAccountsOnARunningCaddyThroughJSON(t *testing.T) {
	w := newWorld(t)
	t.Setenv("BG_BOB_HASH", argonHash(t))
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	cfg := strings.Replace(w.json(5), `"email": "ops@example.com", "hash": "{env.BG_TEST_HASH}",`,
		`"accounts": [{"email": "ops@example.com", "hash": "{env.BG_TEST_HASH}"},
		             {"email": "bob@example.com", "hash": "{env.BG_BOB_HASH}", "sentinel_id": "-1"}],
		 "audit_log": `+strconv.Quote(audit)+`,`, 1)
	cfg = strings.Replace(cfg, `"admin": {"disabled": true}`, `"admin": {"listen": "`+admin+`"}`, 1)
	if !strings.Contains(cfg, `"accounts"`) {
		t.Fatal("the world's JSON changed: no place for the accounts")
	}
	w.load(cfg, "json")

	ops, bob := w.kit("127.0.0.2"), w.kit("127.0.0.3")
	w.signIn(ops)
	before := len(w.smtp.Mails())
	if r := bob.Login("/admin/", "bob@example.com", bobPassword, "INC-9", nil); r.Status != http.StatusSeeOther {
		t.Fatalf("bob's password: %d", r.Status)
	}
	mail := w.smtp.waitMail(t, before, "bob@example.com", "one-time code")
	code := codeRE.FindStringSubmatch(mail.Text)
	if r := bob.SubmitCode("/admin/", code[1]); r.Status != http.StatusSeeOther {
		t.Fatalf("bob's code: %d", r.Status)
	}
	for _, who := range []struct {
		c     *bgtest.Client
		email string
	}{{ops, "ops@example.com"}, {bob, "bob@example.com"}} {
		if r := who.c.Get("/admin/"); r.Status != http.StatusOK {
			t.Fatalf("%s signed in: %d", who.email, r.Status)
		}
		w.up.mu.Lock()
		got := w.up.last.Get("X-Break-Glass-User")
		w.up.mu.Unlock()
		if got != who.email {
			t.Errorf("the upstream got X-Break-Glass-User %q, want %s", got, who.email)
		}
	}
	// The login alerts name the accounts.
	var named []string
	for _, ev := range w.hook.WaitEvents(t, eventLogin, 2) {
		named = append(named, fmt.Sprint(ev["account"]))
	}
	if slices.Sort(named); !slices.Equal(named, []string{"bob@example.com", "ops@example.com"}) {
		t.Errorf("login webhooks name %q", named)
	}
	// The audit lines name the account of each login.
	b, err := os.ReadFile(audit)
	if err != nil {
		t.Fatal(err)
	}
	logins := map[string]bool{}
	for _, l := range bgtest.ReadLogs(bytes.NewReader(b)) {
		if l["event"] == auditLogin {
			logins[fmt.Sprint(l["email"])] = true
		}
	}
	if !logins["ops@example.com"] || !logins["bob@example.com"] {
		t.Errorf("audit login lines name %v", logins)
	}
	// The status lists both accounts, each with its session.
	_, st := adminCall(t, admin, "GET", "/break_glass/status", "")
	ids, _ := st["identities"].([]any)
	if len(ids) != 2 {
		t.Fatalf("identities: %v", st["identities"])
	}
	for _, id := range ids {
		if m := id.(map[string]any); m["live_sessions"] != float64(1) {
			t.Errorf("status of %v", m)
		}
	}
	// Revoking bob's sessions leaves ops signed in.
	if code, v := adminCall(t, admin, "POST", "/break_glass/revoke", `{"email": "bob@example.com"}`); code != 200 || v["revoked"] != float64(1) {
		t.Fatalf("revoke bob: %d %v", code, v)
	}
	if r := bob.Get("/admin/"); r.Status != http.StatusUnauthorized {
		t.Errorf("bob after the revoke: %d", r.Status)
	}
	if r := ops.Get("/admin/"); r.Status != http.StatusOK {
		t.Errorf("ops after bob's revoke: %d", r.Status)
	}
	// The drill sends a code-delivery test to each account.
	rec, err := runningAppDrill(t)
	if err != nil {
		t.Fatal(err)
	}
	codeMails := map[string]bool{}
	for _, r := range rec.Results {
		if r.Channel == "code_email" {
			codeMails[r.Target] = r.OK
		}
	}
	if !codeMails["ops@example.com"] || !codeMails["bob@example.com"] {
		t.Errorf("drill code mails: %v", codeMails)
	}
}

// runningAppDrill runs a drill on the running app, as the command does.
func runningAppDrill(t *testing.T) (drillRecord, error) {
	a, err := runningApp()
	if err != nil {
		return drillRecord{}, err
	}
	return a.drill(context.Background(), "test-host")
}
