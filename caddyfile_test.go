// Tests of configuration: Caddyfile parsing and adaptation, and the checks and logs of provisioning.

package breakglass

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"golang.org/x/crypto/bcrypt"
)

// issueExampleCaddyfile is the example of the feature request, verbatim.
const issueExampleCaddyfile = `{
	break_glass {
		max_attempts 5
		lockout 15m
		code_ttl 10m
		session_ttl 1h
		smtp mail.example.com:587 {
			username ops-mailer
			password {env.SMTP_PASSWORD}
			tls starttls
			from "Break Glass <breakglass@example.com>"
		}
	}
}
admin.example.com {
	break_glass /admin/* {
		email ops@example.com
		hash {env.BREAK_GLASS_HASH}
		allowed_ips 10.0.0.0/8 192.0.2.7 ::1
		alert_emails security@example.com soc@example.com
		alert_webhook https://hooks.example.com/break-glass
		dev_log_code
	}
	reverse_proxy localhost:9000
}
`

// ---------------------------------------------------------------------------
// The handler directive

func TestCaddyfileHandlerParses(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        Handler
	}{
		{"every subdirective", `break_glass {
	email ops@example.com
	hash $2a$04$abcdefghijklmnopqrstuv
	allowed_ips 10.0.0.0/8 192.0.2.7
	allowed_ips ::1
	alert_emails security@example.com soc@example.com
	alert_webhook https://hooks.example.com/break-glass
	alert_webhook https://hooks.slack.com/services/T0/B0/X {
		format slack
		header Authorization "Bearer {env.HOOK_TOKEN}"
		header X-Team ops
		secret {env.HOOK_SECRET}
	}
	alert_on login code_issued
	alert_on lockout
	require_reason
	require_alert
	totp_secret {env.BREAK_GLASS_TOTP}
	audit_log /var/log/caddy/break-glass-audit.jsonl
	max_uses 1
	smtp mail.example.com:465 {
		username ops-mailer
		password {env.SMTP_PASSWORD}
		tls implicit
		from "Break Glass <breakglass@example.com>"
		ca_file /etc/ssl/private-ca.pem
		insecure_skip_verify
		timeout 30s
	}
	dev_log_code
}`, Handler{
			Email:       "ops@example.com",
			Hash:        "$2a$04$abcdefghijklmnopqrstuv",
			AllowedIPs:  []string{"10.0.0.0/8", "192.0.2.7", "::1"},
			AlertEmails: &[]string{"security@example.com", "soc@example.com"},
			AlertWebhooks: []WebhookConfig{
				{URL: "https://hooks.example.com/break-glass"},
				{URL: "https://hooks.slack.com/services/T0/B0/X", Format: "slack", Secret: "{env.HOOK_SECRET}",
					Headers: map[string]string{"Authorization": "Bearer {env.HOOK_TOKEN}", "X-Team": "ops"}},
			},
			AlertOn:       []string{"login", "code_issued", "lockout"},
			RequireReason: true,
			RequireAlert:  true,
			TOTPSecret:    "{env.BREAK_GLASS_TOTP}",
			AuditLog:      "/var/log/caddy/break-glass-audit.jsonl",
			MaxUses:       1,
			SMTP: &SMTPConfig{
				Address:            "mail.example.com:465",
				Username:           "ops-mailer",
				Password:           "{env.SMTP_PASSWORD}",
				TLS:                "implicit",
				From:               "Break Glass <breakglass@example.com>",
				CAFile:             "/etc/ssl/private-ca.pem",
				InsecureSkipVerify: true,
				Timeout:            caddy.Duration(30 * time.Second),
			},
			DevLogCode: true,
		}},
		{"only the required subdirectives, the rest unset", "break_glass {\n\temail ops@example.com\n\thash x\n}", Handler{Email: "ops@example.com", Hash: "x"}},
		{"smtp tls starttls", "break_glass {\n\tsmtp localhost:25 {\n\t\ttls starttls\n\t}\n}", Handler{SMTP: &SMTPConfig{Address: "localhost:25", TLS: "starttls"}}},
		{"smtp tls implicit", "break_glass {\n\tsmtp localhost:25 {\n\t\ttls implicit\n\t}\n}", Handler{SMTP: &SMTPConfig{Address: "localhost:25", TLS: "implicit"}}},
		{"smtp tls none", "break_glass {\n\tsmtp localhost:25 {\n\t\ttls none\n\t}\n}", Handler{SMTP: &SMTPConfig{Address: "localhost:25", TLS: "none"}}},
		{"webauthn relying party", "break_glass {\n\twebauthn_rp_id example.com\n\twebauthn_origins https://admin.example.com\n\twebauthn_origins https://ops.example.com\n\twebauthn_user_verification required\n}",
			Handler{WebAuthnRPID: "example.com", WebAuthnOrigins: []string{"https://admin.example.com", "https://ops.example.com"}, WebAuthnUserVerification: "required"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if h := parseHandlerCaddyfile(t, tc.input); !reflect.DeepEqual(*h, tc.want) {
				t.Errorf("parsed handler:\n got %s\nwant %s", jsonText(t, h), jsonText(t, tc.want))
			}
		})
	}
}

func TestCaddyfileAlertEmailsDistinguishesAbsentEmptyAndListed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lines string
		want  *[]string // nil: the field must stay nil
	}{
		{"absent is nil", "", nil},
		{"no arguments is an empty list", "alert_emails", &[]string{}},
		{"arguments are listed", "alert_emails a@example.com b@example.com", &[]string{"a@example.com", "b@example.com"}},
		{"repeated lines append", "alert_emails a@example.com\n\talert_emails b@example.com c@example.com", &[]string{"a@example.com", "b@example.com", "c@example.com"}},
		{"an empty line then a listed one", "alert_emails\n\talert_emails b@example.com", &[]string{"b@example.com"}},
		{"a listed line then an empty one", "alert_emails a@example.com\n\talert_emails", &[]string{"a@example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := parseHandlerCaddyfile(t, "break_glass {\n\temail ops@example.com\n\t"+tc.lines+"\n}")
			switch {
			case tc.want == nil && h.AlertEmails != nil:
				t.Fatalf("AlertEmails = &%q, want nil", *h.AlertEmails)
			case tc.want == nil:
			case h.AlertEmails == nil:
				t.Fatalf("AlertEmails = nil, want &%q", *tc.want)
			case *h.AlertEmails == nil || !reflect.DeepEqual(*h.AlertEmails, *tc.want):
				t.Fatalf("AlertEmails = &%#v, want &%#v", *h.AlertEmails, *tc.want)
			}
		})
	}
}

// badCaddyfile is an input that must not parse: the error names its line
// and holds every one of want.
type badCaddyfile struct {
	name, input string
	line        int
	want        []string
}

func testRejects(t *testing.T, parse func(t *testing.T, input string) error, cases []badCaddyfile) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantErrorWith(t, parse(t, tc.input), append(tc.want, fmt.Sprintf("Testfile:%d", tc.line))...)
		})
	}
}

func TestCaddyfileRejectsBadHandlerConfigWithItsLine(t *testing.T) {
	testRejects(t, func(_ *testing.T, input string) error {
		var h Handler
		return h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	}, []badCaddyfile{
		{"unknown subdirective", "break_glass {\n\temail ops@example.com\n\tpasword secret\n}", 3, []string{`"pasword"`}},
		{"argument after the directive name", "break_glass oops {\n\temail ops@example.com\n}", 1, []string{"oops"}},
		{"email without a value", "break_glass {\n\temail\n}", 2, []string{"email", "needs a value"}},
		{"email with two values", "break_glass {\n\temail a@example.com b@example.com\n}", 2, []string{"email", "one value"}},
		{"hash without a value", "break_glass {\n\temail ops@example.com\n\thash\n}", 3, []string{"hash", "needs a value"}},
		{"hash with two values", "break_glass {\n\thash a b\n}", 2, []string{"hash", "one value"}},
		{"allowed_ips without a value", "break_glass {\n\tallowed_ips\n}", 2, []string{"allowed_ips"}},
		{"alert_webhook with two values", "break_glass {\n\talert_webhook https://a.example https://b.example\n}", 2, []string{"alert_webhook", "one value"}},
		{"alert_webhook without a value", "break_glass {\n\talert_webhook\n}", 2, []string{"alert_webhook", "needs a value"}},
		{"alert_webhook bad format", "break_glass {\n\talert_webhook https://a.example {\n\t\tformat teams\n\t}\n}", 3, []string{"format", `"teams"`}},
		{"alert_webhook header without a value", "break_glass {\n\talert_webhook https://a.example {\n\t\theader Authorization\n\t}\n}", 3, []string{"header", "a name and a value"}},
		{"alert_webhook unknown subdirective", "break_glass {\n\talert_webhook https://a.example {\n\t\tsigning_key x\n\t}\n}", 3, []string{"alert_webhook", `"signing_key"`}},
		{"alert_on unknown event", "break_glass {\n\talert_on login logout\n}", 2, []string{"alert_on", `"logout"`}},
		{"alert_on without a value", "break_glass {\n\talert_on\n}", 2, []string{"alert_on", "needs at least one"}},
		{"require_reason with an argument", "break_glass {\n\trequire_reason yes\n}", 2, []string{"require_reason", "no argument"}},
		{"require_alert with an argument", "break_glass {\n\trequire_alert yes\n}", 2, []string{"require_alert", "no argument"}},
		{"max_uses zero", "break_glass {\n\tmax_uses 0\n}", 2, []string{"max_uses"}},
		{"totp_secret without a value", "break_glass {\n\ttotp_secret\n}", 2, []string{"totp_secret", "needs a value"}},
		{"dev_log_code with an argument", "break_glass {\n\tdev_log_code yes\n}", 2, []string{"dev_log_code", "no argument"}},
		{"smtp without an address", "break_glass {\n\tsmtp {\n\t\tfrom a@example.com\n\t}\n}", 2, []string{"smtp", "address"}},
		{"smtp with two addresses", "break_glass {\n\tsmtp a.example:25 b.example:25\n}", 2, []string{"smtp", "one address"}},
		{"smtp unknown subdirective", "break_glass {\n\tsmtp a.example:25 {\n\t\tfrom a@example.com\n\t\tport 25\n\t}\n}", 4, []string{"smtp", `"port"`}},
		{"smtp bad tls value", "break_glass {\n\tsmtp a.example:25 {\n\t\ttls ssl\n\t}\n}", 3, []string{"tls", `"ssl"`}},
		{"smtp tls without a value", "break_glass {\n\tsmtp a.example:25 {\n\t\ttls\n\t}\n}", 3, []string{"tls", "needs a value"}},
		{"smtp username with two values", "break_glass {\n\tsmtp a.example:25 {\n\t\tusername a b\n\t}\n}", 3, []string{"username", "one value"}},
		{"smtp password without a value", "break_glass {\n\tsmtp a.example:25 {\n\t\tpassword\n\t}\n}", 3, []string{"password", "needs a value"}},
		{"smtp from without a value", "break_glass {\n\tsmtp a.example:25 {\n\t\tfrom\n\t}\n}", 3, []string{"from", "needs a value"}},
		{"smtp ca_file with two values", "break_glass {\n\tsmtp a.example:25 {\n\t\tca_file a.pem b.pem\n\t}\n}", 3, []string{"ca_file", "one value"}},
		{"smtp insecure_skip_verify with an argument", "break_glass {\n\tsmtp a.example:25 {\n\t\tinsecure_skip_verify true\n\t}\n}", 3, []string{"insecure_skip_verify", "no argument"}},
		{"smtp bad timeout", "break_glass {\n\tsmtp a.example:25 {\n\t\ttimeout soon\n\t}\n}", 3, []string{"timeout", `"soon"`}},
		{"smtp zero timeout", "break_glass {\n\tsmtp a.example:25 {\n\t\ttimeout 0s\n\t}\n}", 3, []string{"timeout", "positive"}},
		{"smtp negative timeout", "break_glass {\n\tsmtp a.example:25 {\n\t\ttimeout -5s\n\t}\n}", 3, []string{"timeout", "positive"}},
		{"smtp given twice", "break_glass {\n\tsmtp a.example:25\n\tsmtp b.example:25\n}", 3, []string{"smtp", "twice"}},
		{"webauthn_rp_id with two values", "break_glass {\n\twebauthn_rp_id example.com example.net\n}", 2, []string{"webauthn_rp_id", "one value"}},
		{"webauthn_origins without a value", "break_glass {\n\twebauthn_origins\n}", 2, []string{"webauthn_origins", "needs at least one"}},
	})
}

// ---------------------------------------------------------------------------
// The global option

func TestCaddyfileGlobalOptionParses(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        App
	}{
		{"every setting", `break_glass {
	max_attempts 3
	max_concurrent_hashes 4
	max_tracked_clients 5000
	state storage
	refresh_interval 2s
	lockout 1h30m
	code_ttl 5m
	session_ttl 2d
	smtp mail.example.com:587 {
		username ops-mailer
		password {env.SMTP_PASSWORD}
		tls none
		from breakglass@example.com
		timeout 20s
	}
}`, App{
			MaxAttempts:         3,
			MaxConcurrentHashes: 4,
			MaxTrackedClients:   5000,
			State:               "storage",
			RefreshInterval:     caddy.Duration(2 * time.Second),
			Lockout:             caddy.Duration(90 * time.Minute),
			CodeTTL:             caddy.Duration(5 * time.Minute),
			SessionTTL:          caddy.Duration(48 * time.Hour),
			SMTP: &SMTPConfig{
				Address:  "mail.example.com:587",
				Username: "ops-mailer",
				Password: "{env.SMTP_PASSWORD}",
				TLS:      "none",
				From:     "breakglass@example.com",
				Timeout:  caddy.Duration(20 * time.Second),
			},
		}},
		{"an empty block leaves the defaults to provision", "break_glass {\n}", App{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app, err := parseGlobalCaddyfile(t, tc.input)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*app, tc.want) {
				t.Errorf("parsed app:\n got %s\nwant %s", jsonText(t, app), jsonText(t, tc.want))
			}
		})
	}
}

func TestCaddyfileRejectsBadGlobalOptionWithItsLine(t *testing.T) {
	testRejects(t, func(t *testing.T, input string) error {
		_, err := parseGlobalCaddyfile(t, input)
		return err
	}, []badCaddyfile{
		{"max_attempts zero", "break_glass {\n\tmax_attempts 0\n}", 2, []string{"max_attempts", `"0"`}},
		{"max_attempts negative", "break_glass {\n\tmax_attempts -1\n}", 2, []string{"max_attempts", `"-1"`}},
		{"max_concurrent_hashes zero", "break_glass {\n\tmax_concurrent_hashes 0\n}", 2, []string{"max_concurrent_hashes", `"0"`}},
		{"state neither memory nor storage", "break_glass {\n\tstate disk\n}", 2, []string{"state", `"disk"`}},
		{"refresh_interval zero", "break_glass {\n\trefresh_interval 0s\n}", 2, []string{"refresh_interval", "positive"}},
		{"max_tracked_clients not a number", "break_glass {\n\tmax_tracked_clients lots\n}", 2, []string{"max_tracked_clients", `"lots"`}},
		{"max_attempts not a number", "break_glass {\n\tmax_attempts abc\n}", 2, []string{"max_attempts", `"abc"`}},
		{"max_attempts fractional", "break_glass {\n\tmax_attempts 2.5\n}", 2, []string{"max_attempts", `"2.5"`}},
		{"max_attempts without a value", "break_glass {\n\tmax_attempts\n}", 2, []string{"max_attempts", "needs a value"}},
		{"max_attempts with two values", "break_glass {\n\tmax_attempts 5 6\n}", 2, []string{"max_attempts", "one value"}},
		{"lockout bad duration", "break_glass {\n\tlockout 15x\n}", 2, []string{"lockout", `"15x"`}},
		{"lockout zero", "break_glass {\n\tlockout 0s\n}", 2, []string{"lockout", "positive"}},
		{"lockout negative", "break_glass {\n\tlockout -1m\n}", 2, []string{"lockout", "positive"}},
		{"code_ttl bad duration", "break_glass {\n\tmax_attempts 5\n\tcode_ttl ten\n}", 3, []string{"code_ttl", `"ten"`}},
		{"code_ttl zero", "break_glass {\n\tcode_ttl 0\n}", 2, []string{"code_ttl", "positive"}},
		{"session_ttl negative", "break_glass {\n\tsession_ttl -1h\n}", 2, []string{"session_ttl", "positive"}},
		{"session_ttl without a value", "break_glass {\n\tsession_ttl\n}", 2, []string{"session_ttl", "needs a value"}},
		{"unknown option", "break_glass {\n\tmax_attempts 5\n\tmax_attempt 5\n}", 3, []string{`"max_attempt"`}},
		{"argument after the option name", "break_glass 5 {\n}", 1, []string{"5"}},
		{"smtp bad tls value", "break_glass {\n\tsmtp mail.example.com:587 {\n\t\ttls starttl\n\t}\n}", 3, []string{"tls", `"starttl"`}},
		{"smtp unknown subdirective", "break_glass {\n\tsmtp mail.example.com:587 {\n\t\tuser ops\n\t}\n}", 3, []string{"smtp", `"user"`}},
		{"smtp given twice", "break_glass {\n\tsmtp a.example:25\n\tsmtp b.example:25\n}", 3, []string{"smtp", "twice"}},
	})
}

// ---------------------------------------------------------------------------
// Adaptation by the real Caddyfile adapter

func TestCaddyfileIssueExampleAdaptsToTheAppAndHandler(t *testing.T) {
	cfg := adaptCaddyfile(t, issueExampleCaddyfile)

	app := jsonAt(t, cfg, "apps", "break_glass")
	wantApp := map[string]any{
		"max_attempts": float64(5),
		"lockout":      float64(15 * time.Minute),
		"code_ttl":     float64(10 * time.Minute),
		"session_ttl":  float64(time.Hour),
		"smtp": map[string]any{
			"address":  "mail.example.com:587",
			"username": "ops-mailer",
			"password": "{env.SMTP_PASSWORD}", // resolved at load, never baked in
			"tls":      "starttls",
			"from":     "Break Glass <breakglass@example.com>",
		},
	}
	if !reflect.DeepEqual(app, wantApp) {
		t.Errorf("apps.break_glass:\n got %s\nwant %s", jsonText(t, app), jsonText(t, wantApp))
	}

	routes := routesWithHandler(cfg, "break_glass")
	if len(routes) != 1 {
		t.Fatalf("%d routes hold a break_glass handler, want 1; config: %s", len(routes), jsonText(t, cfg))
	}
	wantMatch := []any{map[string]any{"path": []any{"/admin/*"}}}
	if !reflect.DeepEqual(routes[0]["match"], wantMatch) {
		t.Errorf("break_glass route match = %s, want %s", jsonText(t, routes[0]["match"]), jsonText(t, wantMatch))
	}
	wantHandler := map[string]any{
		"handler":        "break_glass",
		"email":          "ops@example.com",
		"hash":           "{env.BREAK_GLASS_HASH}",
		"allowed_ips":    []any{"10.0.0.0/8", "192.0.2.7", "::1"},
		"alert_emails":   []any{"security@example.com", "soc@example.com"},
		"alert_webhooks": []any{map[string]any{"url": "https://hooks.example.com/break-glass"}},
		"dev_log_code":   true,
	}
	if bg := theBreakGlassHandler(t, cfg); !reflect.DeepEqual(bg, wantHandler) {
		t.Errorf("break_glass handler:\n got %s\nwant %s", jsonText(t, bg), jsonText(t, wantHandler))
	}
	wantRunsBefore(t, cfg, "break_glass", "reverse_proxy")
}

func TestCaddyfileIssueExampleProvisions(t *testing.T) {
	t.Setenv("SMTP_PASSWORD", "mailer-secret")
	t.Setenv("BREAK_GLASS_HASH", testBcryptHash(t, "pw"))
	cfg := adaptCaddyfile(t, issueExampleCaddyfile)
	// Provision it here without certificates or listeners.
	apps := jsonAt(t, cfg, "apps").(map[string]any)
	delete(apps, "tls")
	cfg["admin"] = map[string]any{"disabled": true, "config": map[string]any{"persist": false}}
	for _, srv := range jsonAt(t, cfg, "apps", "http", "servers").(map[string]any) {
		s := srv.(map[string]any)
		s["listen"] = []any{"127.0.0.1:0"}
		s["automatic_https"] = map[string]any{"disable": true}
	}
	if err := validateJSONConfig(t, cfg); err != nil {
		t.Fatalf("the adapted issue example does not provision: %v", err)
	}
}

func TestCaddyfileBreakGlassIsOrderedBeforeAuthAndRespondWithoutOrderOption(t *testing.T) {
	// Written after respond and basic_auth: only the registered order can put
	// break_glass first.
	cfg := adaptCaddyfile(t, `:8080 {
	respond "hello" 200
	basic_auth /other/* {
		someone $2a$04$abcdefghijklmnopqrstuuN0cJ3rN4nQ7WkqqpRgUjaGIAYvlaPsSu
	}
	break_glass {
		email ops@example.com
		hash h
		dev_log_code
	}
}`)
	wantRunsBefore(t, cfg, "break_glass", "authentication")
	wantRunsBefore(t, cfg, "break_glass", "static_response")
}

func TestCaddyfileAdaptationKeepsEmptyAlertEmailsDistinctFromAbsent(t *testing.T) {
	for _, tc := range []struct {
		name    string
		line    string
		present bool
	}{
		{"empty", "alert_emails", true},
		{"absent", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := adaptCaddyfile(t, ":8080 {\n\tbreak_glass {\n\t\temail ops@example.com\n\t\thash h\n\t\t"+tc.line+"\n\t}\n}")
			bg := theBreakGlassHandler(t, cfg)
			v, ok := bg["alert_emails"]
			if ok != tc.present {
				t.Fatalf("alert_emails present = %v, want %v (handler %s)", ok, tc.present, jsonText(t, bg))
			}
			if ok && !reflect.DeepEqual(v, []any{}) {
				t.Errorf("alert_emails = %s, want []", jsonText(t, v))
			}
		})
	}
}

func TestCaddyfileWithoutGlobalOptionHasNoApp(t *testing.T) {
	cfg := adaptCaddyfile(t, ":8080 {\n\tbreak_glass {\n\t\temail ops@example.com\n\t\thash h\n\t\tdev_log_code\n\t}\n}")
	if _, ok := jsonAt(t, cfg, "apps").(map[string]any)["break_glass"]; ok {
		t.Errorf("apps.break_glass present without the global option: %s", jsonText(t, cfg))
	}
	theBreakGlassHandler(t, cfg)
}

func TestCaddyfileAdapterReportsParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"unknown handler subdirective", ":8080 {\n\tbreak_glass {\n\t\temial ops@example.com\n\t}\n}", []string{`"emial"`, ":3"}},
		{"bad global option", "{\n\tbreak_glass {\n\t\tmax_attempts 0\n\t}\n}\n:8080 {\n\trespond ok\n}", []string{"max_attempts", ":3"}},
		{"global option twice", "{\n\tbreak_glass {\n\t\tmax_attempts 3\n\t}\n\tbreak_glass {\n\t\tlockout 1m\n\t}\n}\n:8080 {\n\trespond ok\n}", []string{"break_glass", "twice", ":5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(tc.src), nil)
			wantErrorWith(t, err, tc.want...)
		})
	}
}

func TestCaddyfileExampleFileAdapts(t *testing.T) {
	src, err := os.ReadFile("example.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	cfg := adaptCaddyfile(t, string(src))
	app := jsonAt(t, cfg, "apps", "break_glass").(map[string]any)
	if app["max_attempts"] != float64(5) || app["lockout"] != float64(15*time.Minute) {
		t.Errorf("apps.break_glass = %s", jsonText(t, app))
	}
	bg := theBreakGlassHandler(t, cfg)
	accounts, _ := bg["accounts"].([]any)
	if len(accounts) != 2 || bg["dev_log_code"] != true {
		t.Fatalf("break_glass handler = %s", jsonText(t, bg))
	}
	for i, want := range []string{"ops@example.com", "second@example.com"} {
		acc := accounts[i].(map[string]any)
		if acc["email"] != want {
			t.Errorf("account %d = %s, want %s", i, jsonText(t, acc), want)
		}
		if _, _, err := parseHash(acc["hash"].(string)); err != nil {
			t.Errorf("example hash of %s: %v", want, err)
		}
	}
	if h0, h1 := accounts[0].(map[string]any)["hash"].(string), accounts[1].(map[string]any)["hash"].(string); h0[:2] != "$2" || h1[:10] != "$argon2id$" {
		t.Errorf("the example's hashes are not one bcrypt and one argon2id")
	}
	wantRunsBefore(t, cfg, "break_glass", "static_response")
}

// ---------------------------------------------------------------------------
// Provisioning

func TestProvisionAcceptsGoodConfigAndRejectsBadNamingTheField(t *testing.T) {
	hash := testBcryptHash(t, "pw")
	for _, tc := range []struct {
		name    string
		handler func(h map[string]any)
		app     map[string]any // the break_glass app; nil: not configured
		want    []string       // in the error; none: the config provisions
		notWant []string
	}{
		{name: "handler smtp"},
		{name: "app smtp only", handler: func(h map[string]any) { delete(h, "smtp") }, app: map[string]any{"smtp": map[string]any{"address": "mail.example.com:587", "from": "bg@example.com"}}},
		{name: "dev_log_code without smtp", handler: func(h map[string]any) { delete(h, "smtp"); h["dev_log_code"] = true }},
		{name: "base64-encoded hash", handler: func(h map[string]any) { h["hash"] = base64.StdEncoding.EncodeToString([]byte(hash)) }},
		{name: "every field", handler: func(h map[string]any) {
			h["allowed_ips"] = []string{"10.0.0.0/8", "192.0.2.7", "::1", "::ffff:10.0.0.0/104"}
			h["alert_emails"] = []string{"soc@example.com", "Security <security@example.com>"}
			h["alert_webhook"] = "https://hooks.example.com/break-glass"
			h["smtp"].(map[string]any)["tls"] = "implicit"
			h["smtp"].(map[string]any)["timeout"] = "5s"
		}, app: map[string]any{"max_attempts": 3, "lockout": "1h", "code_ttl": "5m", "session_ttl": "30m"}},
		{name: "app max_attempts 0 in JSON", app: map[string]any{"max_attempts": 0}},
		{name: "missing email", handler: func(h map[string]any) { delete(h, "email") }, want: []string{"email: required"}},
		{name: "email not a plain address", handler: func(h map[string]any) { h["email"] = "Ops <ops@example.com>" }, want: []string{`email "Ops <ops@example.com>"`, "not a plain email address"}},
		{name: "email from an unset env var", handler: func(h map[string]any) { h["email"] = "{env.BREAK_GLASS_TEST_UNSET_EMAIL}" }, want: []string{"email: ", "BREAK_GLASS_TEST_UNSET_EMAIL"}},
		{name: "missing hash", handler: func(h map[string]any) { delete(h, "hash") }, want: []string{"hash: required"}},
		{
			name:    "hash neither bcrypt nor argon2id",
			handler: func(h map[string]any) { h["hash"] = "plaintext-s3cret-password" },
			want:    []string{"hash: not a bcrypt or argon2id hash"},
			notWant: []string{"s3cret"},
		},
		{
			name:    "hash a truncated bcrypt",
			handler: func(h map[string]any) { h["hash"] = hash[:40] },
			want:    []string{"hash: not a valid bcrypt hash"},
			notWant: []string{hash[7:40]},
		},
		{name: "hash from an unset env var", handler: func(h map[string]any) { h["hash"] = "{env.BREAK_GLASS_TEST_UNSET_HASH}" }, want: []string{"hash: ", "BREAK_GLASS_TEST_UNSET_HASH"}},
		{name: "bad IP in allowed_ips", handler: func(h map[string]any) { h["allowed_ips"] = []string{"10.0.0.0/8", "10.0.0.300"} }, want: []string{"allowed_ips", "10.0.0.300"}},
		{name: "bad CIDR in allowed_ips", handler: func(h map[string]any) { h["allowed_ips"] = []string{"::1", "10.0.0.0/33"} }, want: []string{"allowed_ips", "10.0.0.0/33"}},
		{name: "hostname in allowed_ips", handler: func(h map[string]any) { h["allowed_ips"] = []string{"localhost"} }, want: []string{"allowed_ips", "localhost"}},
		{name: "webhook not http", handler: func(h map[string]any) { h["alert_webhook"] = "ftp://hooks.example.com/x" }, want: []string{"alert_webhook: must be an absolute http or https URL"}},
		{name: "webhook relative", handler: func(h map[string]any) { h["alert_webhook"] = "/hooks/break-glass" }, want: []string{"alert_webhook: must be an absolute http or https URL"}},
		{name: "webhook without scheme", handler: func(h map[string]any) { h["alert_webhook"] = "hooks.example.com/break-glass" }, want: []string{"alert_webhook: must be an absolute http or https URL"}},
		{name: "webhook without host", handler: func(h map[string]any) { h["alert_webhook"] = "https:///x" }, want: []string{"alert_webhook: must be an absolute http or https URL"}},
		{name: "webhook format unknown", handler: func(h map[string]any) {
			h["alert_webhooks"] = []any{map[string]any{"url": "https://hooks.example.com/x", "format": "teams"}}
		}, want: []string{"alert_webhook: format \"teams\""}},
		{name: "webhook header name", handler: func(h map[string]any) {
			h["alert_webhooks"] = []any{map[string]any{"url": "https://hooks.example.com/x", "headers": map[string]any{"Bad Name": "v"}}}
		}, want: []string{"header \"Bad Name\": not a valid header name"}},
		{name: "webhook header set by the plugin", handler: func(h map[string]any) {
			h["alert_webhooks"] = []any{map[string]any{"url": "https://hooks.example.com/x", "headers": map[string]any{"x-break-glass-signature": "forged"}}}
		}, want: []string{"set by break_glass itself"}},
		{name: "webhook header with a line break", handler: func(h map[string]any) {
			h["alert_webhooks"] = []any{map[string]any{"url": "https://hooks.example.com/x", "headers": map[string]any{"Authorization": "Bearer x\r\nX-Evil: 1"}}}
		}, want: []string{"line break"}, notWant: []string{"Bearer"}},
		{name: "webhook secret from an unset env var", handler: func(h map[string]any) {
			h["alert_webhooks"] = []any{map[string]any{"url": "https://hooks.example.com/x", "secret": "{env.BREAK_GLASS_TEST_UNSET_SECRET}"}}
		}, want: []string{"secret", "BREAK_GLASS_TEST_UNSET_SECRET"}},
		{name: "webhook secret holding braces", handler: func(h map[string]any) {
			h["alert_webhooks"] = []any{map[string]any{"url": "https://hooks.example.com/x", "secret": "s3cr{env.BREAK_GLASS_TEST_UNSET_X}zz9"}}
		}, want: []string{"secret: holds a { }"}, notWant: []string{"s3cr", "zz9", "BREAK_GLASS_TEST_UNSET_X"}},
		{name: "webhook header with a control character", handler: func(h map[string]any) {
			h["alert_webhooks"] = []any{map[string]any{"url": "https://hooks.example.com/x", "headers": map[string]any{"X-Token": "a\u0007b"}}}
		}, want: []string{"control character"}},
		{name: "alert_on unknown event", handler: func(h map[string]any) { h["alert_on"] = []string{"login", "logout"} }, want: []string{`alert_on: "logout"`}},
		{name: "require_alert without a channel", handler: func(h map[string]any) { h["require_alert"] = true }, want: []string{"require_alert: needs an alert channel"}},
		{name: "require_alert without login alerts", handler: func(h map[string]any) {
			h["require_alert"], h["alert_on"], h["alert_webhook"] = true, []string{"lockout"}, "https://hooks.example.com/x"
		}, want: []string{"require_alert", "login in alert_on"}},
		{name: "totp_secret not base32", handler: func(h map[string]any) { h["totp_secret"] = "not-base32!s3cret" }, want: []string{"totp_secret: not a base32 secret"}, notWant: []string{"s3cret"}},
		{name: "totp_secret too short", handler: func(h map[string]any) { h["totp_secret"] = "JBSWY3DP" }, want: []string{"totp_secret: 5 bytes is too short"}},
		{name: "max_uses negative", handler: func(h map[string]any) { h["max_uses"] = -1 }, want: []string{"max_uses: must be at least 1"}},
		{name: "audit_log in a missing folder", handler: func(h map[string]any) { h["audit_log"] = "/nonexistent-folder/audit.jsonl" }, want: []string{"audit_log: ", "/nonexistent-folder/audit.jsonl"}},
		{name: "alert email does not parse", handler: func(h map[string]any) { h["alert_emails"] = []string{"soc@example.com", "not an address"} }, want: []string{`alert_emails: "not an address"`}},
		{name: "smtp from does not parse", handler: func(h map[string]any) { h["smtp"].(map[string]any)["from"] = "Break Glass <nowhere" }, want: []string{`smtp: from "Break Glass <nowhere"`}},
		{name: "smtp from missing", handler: func(h map[string]any) { delete(h["smtp"].(map[string]any), "from") }, want: []string{"smtp: from: required"}},
		{name: "smtp address without port", handler: func(h map[string]any) { h["smtp"].(map[string]any)["address"] = "mail.example.com" }, want: []string{`smtp: address "mail.example.com"`}},
		{name: "smtp bad tls in JSON", handler: func(h map[string]any) { h["smtp"].(map[string]any)["tls"] = "ssl" }, want: []string{`smtp: tls "ssl"`}},
		{name: "smtp negative timeout in JSON", handler: func(h map[string]any) { h["smtp"].(map[string]any)["timeout"] = "-1s" }, want: []string{"smtp: timeout"}},
		{name: "app max_attempts negative", app: map[string]any{"max_attempts": -1}, want: []string{"max_attempts: must be at least 1"}},
		{name: "app max_concurrent_hashes negative", app: map[string]any{"max_concurrent_hashes": -2}, want: []string{"max_concurrent_hashes: must be at least 1"}},
		{name: "app state unknown", app: map[string]any{"state": "disk"}, want: []string{`state: "disk": must be memory or storage`}},
		{name: "app max_tracked_clients negative", app: map[string]any{"max_tracked_clients": -2}, want: []string{"max_tracked_clients: must be at least 1"}},
		{name: "app lockout negative", app: map[string]any{"lockout": "-1m"}, want: []string{"lockout: must be a positive duration"}},
		{name: "app code_ttl negative", app: map[string]any{"code_ttl": -1}, want: []string{"code_ttl: must be a positive duration"}},
		{name: "app session_ttl negative", app: map[string]any{"session_ttl": "-2h"}, want: []string{"session_ttl: must be a positive duration"}},
		{name: "app smtp from does not parse", handler: func(h map[string]any) { delete(h, "smtp") }, app: map[string]any{"smtp": map[string]any{"address": "mail.example.com:587", "from": "@@"}}, want: []string{`smtp: from "@@"`}},
		{name: "no smtp anywhere and no dev_log_code", handler: func(h map[string]any) { delete(h, "smtp") }, want: []string{"no way to deliver the code"}},
		{name: "webauthn_rp_id and webauthn_origins", handler: func(h map[string]any) {
			h["webauthn_rp_id"], h["webauthn_origins"] = "example.com", []string{"https://admin.example.com", "https://example.com:8443"}
		}},
		{name: "webauthn_origins without webauthn_rp_id", handler: func(h map[string]any) { h["webauthn_origins"] = []string{"https://admin.example.com"} },
			want: []string{"webauthn_origins: needs webauthn_rp_id"}},
		{name: "webauthn_rp_id an IP address", handler: func(h map[string]any) { h["webauthn_rp_id"] = "192.0.2.1" },
			want: []string{`webauthn_rp_id: "192.0.2.1": an IP address cannot be a WebAuthn RP ID`}},
		{name: "webauthn_rp_id a URL", handler: func(h map[string]any) { h["webauthn_rp_id"] = "https://example.com" },
			want: []string{`webauthn_rp_id: "https://example.com": must be a lower-case domain name`}},
		{name: "webauthn_origins outside webauthn_rp_id", handler: func(h map[string]any) {
			h["webauthn_rp_id"], h["webauthn_origins"] = "example.com", []string{"https://admin.example.com", "https://example.net"}
		}, want: []string{`webauthn_origins: "https://example.net": the host is not example.com or a subdomain`}},
		{
			name: "alert_emails without smtp",
			handler: func(h map[string]any) {
				delete(h, "smtp")
				h["dev_log_code"] = true
				h["alert_emails"] = []string{"soc@example.com"}
			},
			want: []string{"alert_emails: needs smtp"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			unsetEnvForTest(t, "BREAK_GLASS_TEST_UNSET_EMAIL")
			unsetEnvForTest(t, "BREAK_GLASS_TEST_UNSET_HASH")
			h := validHandlerJSON(hash)
			if tc.handler != nil {
				tc.handler(h)
			}
			err := validateJSONConfig(t, testCaddyConfig(h, tc.app, ""))
			if tc.want == nil {
				if err != nil {
					t.Fatalf("provisioning failed: %v", err)
				}
				return
			}
			wantErrorWith(t, err, tc.want...)
			for _, s := range tc.notWant {
				if err != nil && strings.Contains(err.Error(), s) {
					t.Errorf("error %q shows %q", err, s)
				}
			}
		})
	}
}

func TestProvisionResolvesEnvPlaceholdersInEmailAndHash(t *testing.T) {
	t.Setenv("BREAK_GLASS_TEST_EMAIL", "oncall@example.com")
	t.Setenv("BREAK_GLASS_TEST_HASH", testBcryptHash(t, "pw"))
	h := validHandlerJSON("{env.BREAK_GLASS_TEST_HASH}")
	h["email"] = "{env.BREAK_GLASS_TEST_EMAIL}"
	h["dev_log_code"] = true // its warning shows the resolved email
	var emails []any
	for _, e := range provisionLogs(t, h) {
		if v, ok := e["accounts"].([]any); ok {
			emails = append(emails, v...)
		}
	}
	if !reflect.DeepEqual(emails, []any{"oncall@example.com"}) {
		t.Errorf("logged emails = %q, want the resolved address once", emails)
	}
}

func TestProvisionAppJSONZeroMeansTheDefaults(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want App
	}{
		{`{"max_attempts":0}`, App{MaxAttempts: 5, Lockout: caddy.Duration(15 * time.Minute), CodeTTL: caddy.Duration(10 * time.Minute), SessionTTL: caddy.Duration(time.Hour)}},
		{`{}`, App{MaxAttempts: 5, Lockout: caddy.Duration(15 * time.Minute), CodeTTL: caddy.Duration(10 * time.Minute), SessionTTL: caddy.Duration(time.Hour)}},
		{`{"max_attempts":2,"lockout":"1m","code_ttl":"2m","session_ttl":"3m"}`, App{MaxAttempts: 2, Lockout: caddy.Duration(time.Minute), CodeTTL: caddy.Duration(2 * time.Minute), SessionTTL: caddy.Duration(3 * time.Minute)}},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			var app App
			if err := json.Unmarshal([]byte(tc.raw), &app); err != nil {
				t.Fatal(err)
			}
			ctx, err := caddy.ProvisionContext(nil) // a config's context, with its storage
			if err != nil {
				t.Fatal(err)
			}
			if err := app.Provision(ctx); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := app.Cleanup(); err != nil {
					t.Error(err)
				}
			}()
			if app.state == nil {
				t.Error("provisioned app has no state")
			}
			got := [4]any{app.MaxAttempts, app.Lockout, app.CodeTTL, app.SessionTTL}
			want := [4]any{tc.want.MaxAttempts, tc.want.Lockout, tc.want.CodeTTL, tc.want.SessionTTL}
			if got != want {
				t.Errorf("provisioned app = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestProvisionLogsWarningsForEmptyAlertEmailsAndDevLogCode(t *testing.T) {
	hash := testBcryptHash(t, "pw")
	for _, tc := range []struct {
		name          string
		handler       func(h map[string]any)
		alertWarnings int // how many warnings about alert_emails are wanted
		devWarnings   int // how many about dev_log_code
	}{
		{name: "explicitly empty alert_emails", handler: func(h map[string]any) { h["alert_emails"] = []string{} }, alertWarnings: 1},
		{name: "absent alert_emails with dev_log_code", handler: func(h map[string]any) { h["dev_log_code"] = true }, devWarnings: 1},
		{name: "listed alert_emails with dev_log_code", handler: func(h map[string]any) { h["alert_emails"] = []string{"soc@example.com"}; h["dev_log_code"] = true }, devWarnings: 1},
		{name: "empty alert_emails and dev_log_code", handler: func(h map[string]any) { h["alert_emails"] = []string{}; h["dev_log_code"] = true }, alertWarnings: 1, devWarnings: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := validHandlerJSON(hash)
			tc.handler(h)
			var alertWarnings, devWarnings int
			for _, e := range provisionLogs(t, h) {
				msg, _ := e["msg"].(string)
				if e["logger"] != "http.handlers.break_glass" {
					continue
				}
				switch {
				case strings.Contains(msg, "alert_emails"):
					if e["level"] != "warn" {
						t.Errorf("alert_emails entry at %v: %q", e["level"], msg)
					}
					alertWarnings++
				case strings.Contains(msg, "dev_log_code"):
					if e["level"] != "warn" || !strings.Contains(msg, "codes") || !strings.Contains(msg, "log") {
						t.Errorf("dev_log_code entry does not warn that codes go to the log: %v %q", e["level"], msg)
					}
					devWarnings++
				}
			}
			if alertWarnings != tc.alertWarnings {
				t.Errorf("%d alert_emails warnings, want %d", alertWarnings, tc.alertWarnings)
			}
			if devWarnings != tc.devWarnings {
				t.Errorf("%d dev_log_code warnings, want %d", devWarnings, tc.devWarnings)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Helpers

// parseHandlerCaddyfile parses a handler directive and fails the test on error.
func parseHandlerCaddyfile(t *testing.T, input string) *Handler {
	t.Helper()
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
		t.Fatalf("parsing %q: %v", input, err)
	}
	return &h
}

// parseGlobalCaddyfile parses the global option and decodes the app it makes.
func parseGlobalCaddyfile(t *testing.T, input string) (*App, error) {
	t.Helper()
	v, err := parseGlobalOption(caddyfile.NewTestDispenser(input), nil)
	if err != nil {
		return nil, err
	}
	a, ok := v.(httpcaddyfile.App)
	if !ok || a.Name != "break_glass" {
		t.Fatalf("global option gave %#v, want the break_glass httpcaddyfile.App", v)
	}
	var app App
	if err := json.Unmarshal(a.Value, &app); err != nil {
		t.Fatalf("decoding %s: %v", a.Value, err)
	}
	return &app, nil
}

// adaptCaddyfile runs the real Caddyfile adapter and decodes its JSON.
func adaptCaddyfile(t *testing.T, src string) map[string]any {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), nil)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	for _, w := range warnings {
		t.Logf("adapter warning: %s", w.String())
	}
	var cfg map[string]any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatalf("decoding adapted config: %v", err)
	}
	return cfg
}

// validHandlerJSON is a handler config that provisions; tests break one field.
func validHandlerJSON(hash string) map[string]any {
	return map[string]any{
		"email": "ops@example.com",
		"hash":  hash,
		"smtp":  map[string]any{"address": "mail.example.com:587", "from": "Break Glass <breakglass@example.com>"},
	}
}

// testCaddyConfig is a whole config with one server (never started) whose
// only route is the handler; app, if not nil, configures the break_glass app;
// logPath, if set, receives the handler's logs as JSON lines.
func testCaddyConfig(handler, app map[string]any, logPath string) map[string]any {
	h := map[string]any{"handler": "break_glass"}
	for k, v := range handler {
		h[k] = v
	}
	apps := map[string]any{
		"http": map[string]any{"servers": map[string]any{"srv0": map[string]any{
			"listen":          []string{"127.0.0.1:0"},
			"automatic_https": map[string]any{"disable": true},
			"routes":          []any{map[string]any{"handle": []any{h}}},
		}}},
	}
	if app != nil {
		apps["break_glass"] = app
	}
	cfg := map[string]any{
		"admin": map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
		"apps":  apps,
	}
	if logPath != "" {
		cfg["logging"] = map[string]any{"logs": map[string]any{"break_glass_test": map[string]any{
			"writer":  map[string]any{"output": "file", "filename": logPath, "roll": false},
			"encoder": map[string]any{"format": "json"},
			"level":   "DEBUG",
			"include": []string{"http.handlers.break_glass"},
		}}}
	}
	return cfg
}

// validateJSONConfig provisions cfg with caddy.Validate (every module's
// Provision, no listener) and cleans it up.
func validateJSONConfig(t *testing.T, cfg map[string]any) error {
	t.Helper()
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var c caddy.Config
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatalf("decoding config: %v", err)
	}
	return caddy.Validate(&c)
}

// provisionLogs provisions a config whose only route is the handler and
// returns what the handler logged; each line must be a JSON object.
func provisionLogs(t *testing.T, handler map[string]any) bgtest.Logs {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "caddy.log")
	if err := validateJSONConfig(t, testCaddyConfig(handler, nil, logPath)); err != nil {
		t.Fatalf("provisioning failed: %v", err)
	}
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatalf("reading the log: %v", err)
	}
	logs := bgtest.ReadLogs(bytes.NewReader(data))
	if n := bytes.Count(data, []byte("\n")); len(logs) != n {
		t.Fatalf("%d of the %d log lines are JSON objects:\n%s", len(logs), n, data)
	}
	return logs
}

// handlersInOrder returns every handler object of an adapted config, depth
// first, which is the order in which they run.
func handlersInOrder(v any) []map[string]any {
	var out []map[string]any
	switch v := v.(type) {
	case map[string]any:
		if _, ok := v["handler"].(string); ok {
			out = append(out, v)
		}
		// Visit keys in a fixed order; within a route "match" holds no handler
		// and "handle" is the only list of handlers.
		for _, k := range slices.Sorted(maps.Keys(v)) {
			out = append(out, handlersInOrder(v[k])...)
		}
	case []any:
		for _, e := range v {
			out = append(out, handlersInOrder(e)...)
		}
	}
	return out
}

// routesWithHandler returns the route objects whose handle list holds a
// handler of that name.
func routesWithHandler(v any, name string) []map[string]any {
	var out []map[string]any
	switch v := v.(type) {
	case map[string]any:
		if hs, ok := v["handle"].([]any); ok {
			for _, h := range hs {
				if m, ok := h.(map[string]any); ok && m["handler"] == name {
					out = append(out, v)
					break
				}
			}
		}
		for _, k := range slices.Sorted(maps.Keys(v)) {
			out = append(out, routesWithHandler(v[k], name)...)
		}
	case []any:
		for _, e := range v {
			out = append(out, routesWithHandler(e, name)...)
		}
	}
	return out
}

// theBreakGlassHandler is the one break_glass handler of an adapted config;
// the test fails unless there is exactly one.
func theBreakGlassHandler(t *testing.T, cfg map[string]any) map[string]any {
	t.Helper()
	var bg []map[string]any
	for _, h := range handlersInOrder(cfg) {
		if h["handler"] == "break_glass" {
			bg = append(bg, h)
		}
	}
	if len(bg) != 1 {
		t.Fatalf("%d break_glass handlers, want 1: %s", len(bg), jsonText(t, cfg))
	}
	return bg[0]
}

// wantRunsBefore fails unless an adapted config has handlers named first and
// then, the first of first running before the first of then.
func wantRunsBefore(t *testing.T, cfg map[string]any, first, then string) {
	t.Helper()
	hs := handlersInOrder(cfg)
	index := func(name string) int {
		return slices.IndexFunc(hs, func(h map[string]any) bool { return h["handler"] == name })
	}
	if i, j := index(first), index(then); i < 0 || j < 0 || i > j {
		t.Errorf("%s at %d, %s at %d: %s must come first in %s", first, i, then, j, first, jsonText(t, cfg))
	}
}

// jsonAt walks nested objects of a decoded JSON document.
func jsonAt(t *testing.T, v any, keys ...string) any {
	t.Helper()
	for i, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%s is not an object", strings.Join(keys[:i], "."))
		}
		if v, ok = m[k]; !ok {
			t.Fatalf("%s: not found", strings.Join(keys[:i+1], "."))
		}
	}
	return v
}

// wantErrorWith fails unless err is non-nil and contains every substring.
func wantErrorWith(t *testing.T, err error, substrings ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", substrings)
	}
	for _, s := range substrings {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

// testBcryptHash hashes password at the minimum cost, to keep tests fast.
func testBcryptHash(t *testing.T, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// unsetEnvForTest unsets an environment variable for the test, restoring it after.
func unsetEnvForTest(t *testing.T, name string) {
	t.Helper()
	t.Setenv(name, "")
	if err := os.Unsetenv(name); err != nil {
		t.Fatal(err)
	}
}

func jsonText(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
