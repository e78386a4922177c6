// The `caddy break-glass` commands: drill (test every delivery channel
// without serving the config), and status, unlock and revoke (through the
// admin API of a running Caddy).

package breakglass

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "break-glass",
		Usage: "drill|status|unlock|revoke|approve|refuse|totp|verify-audit",
		Short: "Operate the break_glass emergency login: drill, status, unlock, revoke, approve, refuse",
		Long: `
Commands to operate the break_glass handler.

  drill    Loads the config without serving it and tests every delivery
           channel: a drill code mail (holding no code) to each account's
           email, and a drill alert (event break_glass_drill, severity info)
           naming each account to each alert channel. Prints a table,
           records the drill in the config's storage, and exits non-zero
           if any channel failed.
  status   Shows identities, pending codes, live sessions, locked clients,
           the settings in force and the last drill of a running Caddy.
  unlock   Clears a client's failures (an IPv6 client: its /64).
  revoke   Ends every break-glass session, or those of one email.
  approve  Approves a sign-in waiting for approval (its ID: see status).
  refuse   Refuses a sign-in waiting for approval.
  totp     Makes a TOTP secret for totp_secret, and its otpauth:// URI.
  verify-audit
           Checks the hash chain of an audit_log file.

status, unlock, revoke, approve and refuse call the admin API: --address, or the admin
address of --config, or the default (localhost:2019).`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(drillCommand(), statusCommand(), unlockCommand(), revokeCommand(), decisionCommand(true), decisionCommand(false),
				totpCommand(), verifyAuditCommand())
		},
	})
}

// out is where the commands print; tests replace it.
var out io.Writer = os.Stdout

func subcommand(use, short, long string, args cobra.PositionalArgs, f func(fl caddycmd.Flags, args []string) (int, error)) *cobra.Command {
	c := &cobra.Command{
		Use: use, Short: short, Long: strings.TrimSpace(long), Args: args,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) { return f(fl, args) })(cmd, args)
		},
	}
	c.Flags().Bool("json", false, "Print JSON instead of a table")
	return c
}

func adminFlags(c *cobra.Command) *cobra.Command {
	c.Flags().String("address", "", "The address of the admin API of the running Caddy")
	c.Flags().StringP("config", "c", "", "Take the admin address from this config file")
	c.Flags().StringP("adapter", "a", "", "The adapter of --config")
	return c
}

func drillCommand() *cobra.Command {
	c := subcommand("drill --config <file> [--adapter <name>] [--json]",
		"Test every code and alert channel without anyone signing in",
		`
Loads the config without serving it and, for every account of every
break_glass handler, sends a drill code mail (it holds no code) to the
account's email, where its codes go, and a drill alert naming the account
(event break_glass_drill, severity info, marked as a test) to each of the
handler's alert emails and webhooks. Prints one line per channel (ok, or the error),
records the drill in the config's storage (where a running Caddy's
caddy_break_glass_last_drill_timestamp_seconds reads it), and exits 1 if any
channel failed.`, cobra.NoArgs, cmdDrill)
	c.Flags().StringP("config", "c", "", "The config file to drill (default: the Caddyfile in the current directory)")
	c.Flags().StringP("adapter", "a", "", "The config adapter (e.g. caddyfile)")
	return c
}

func cmdDrill(fl caddycmd.Flags, _ []string) (int, error) {
	cfgJSON, _, _, err := caddycmd.LoadConfig(fl.String("config"), fl.String("adapter"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if len(cfgJSON) == 0 {
		return caddy.ExitCodeFailedStartup, errors.New("no config: give --config (and --adapter)")
	}
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("decoding the config: %v", err)
	}
	drilling.Store(true)
	ctx, err := caddy.ProvisionContext(&cfg)
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("loading the config: %v", err)
	}
	appIface, err := ctx.AppIfConfigured("break_glass")
	if err != nil {
		return caddy.ExitCodeFailedStartup, errors.New("no break_glass handler in the config")
	}
	host, _ := os.Hostname()
	return runDrill(ctx, appIface.(*App), host, fl.Bool("json"))
}

// runDrill drills the app's handlers, prints the outcome and records it.
func runDrill(ctx context.Context, a *App, host string, asJSON bool) (int, error) {
	rec, err := a.drill(ctx, host)
	if err != nil {
		return 1, err
	}
	var recordErr error
	if a.storage == nil {
		recordErr = errors.New("no storage to record the drill in")
	} else {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		recordErr = recordDrill(sctx, a.storage, rec)
		cancel()
		forgetLastDrill()
	}
	if asJSON {
		if err := json.NewEncoder(out).Encode(rec); err != nil {
			return 1, err
		}
	} else {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "EMAIL\tCHANNEL\tTARGET\tRESULT")
		for _, r := range rec.Results {
			res := "ok"
			if !r.OK {
				res = "error: " + r.Error
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Email, r.Channel, r.Target, res)
		}
		_ = tw.Flush()
	}
	failed := rec.failed()
	switch {
	case len(failed) > 0:
		return 1, fmt.Errorf("drill failed: %d of %d channels: %s", len(failed), len(rec.Results), strings.Join(failed, "; "))
	case recordErr != nil:
		return 1, fmt.Errorf("every channel delivered, but the drill was not recorded: %v", recordErr)
	}
	if !asJSON {
		fmt.Fprintf(out, "\nDrill OK: %d channels delivered; recorded at %s.\n", len(rec.Results), rec.Time.Format(time.RFC3339))
	}
	return 0, nil
}

// adminRequest calls the admin API of the running Caddy and decodes its
// JSON answer into v.
func adminRequest(fl caddycmd.Flags, method, uri string, body any, v any) error {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return fmt.Errorf("finding the admin address: %v", err)
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, uri, nil, rd)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(v)
}

func statusCommand() *cobra.Command {
	return adminFlags(subcommand("status [--address <addr>] [--json]",
		"Show identities, pending codes, sessions, locked clients and the last drill",
		"Calls GET /break_glass/status on the admin API of the running Caddy and prints it.",
		cobra.NoArgs, cmdStatus))
}

func cmdStatus(fl caddycmd.Flags, _ []string) (int, error) {
	var raw json.RawMessage
	if err := adminRequest(fl, http.MethodGet, "/break_glass/status", nil, &raw); err != nil {
		return 1, err
	}
	if fl.Bool("json") {
		_, err := fmt.Fprintf(out, "%s\n", bytes.TrimSpace(raw))
		return 0, err
	}
	var st statusReply
	if err := json.Unmarshal(raw, &st); err != nil {
		return 1, fmt.Errorf("decoding the status: %v", err)
	}
	printStatus(out, st)
	return 0, nil
}

func printStatus(w io.Writer, st statusReply) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ACCOUNT\tSECOND FACTOR\tCODES PENDING\tLIVE SESSIONS")
	for _, id := range st.Identities {
		pending := "none"
		if id.CodePending && id.CodeExpires != nil {
			pending = fmt.Sprintf("%d, until %s", id.CodesPending, id.CodeExpires.UTC().Format(time.RFC3339))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", id.Email, strings.Join(id.SecondFactor, " "), pending, id.Sessions)
	}
	_ = tw.Flush()
	keys := 0
	for _, id := range st.Identities {
		keys += len(id.Keys)
	}
	if keys > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(tw, "ACCOUNT\tSECURITY KEY\tSIGN COUNT\tLAST USED\tWARNING")
		for _, id := range st.Identities {
			for _, k := range id.Keys {
				last, warn := "never", "-"
				if k.LastUsed != nil {
					last = k.LastUsed.Format(time.RFC3339)
				}
				switch {
				case k.Error != "":
					warn = "record unreadable: " + k.Error
				case k.CloneWarning:
					warn = "CLONE WARNING: refused"
				}
				fmt.Fprintf(tw, "%s\t%q\t%d\t%s\t%s\n", id.Email, k.Name, k.SignCount, last, warn)
			}
		}
		_ = tw.Flush()
	}
	fmt.Fprintln(w)
	if len(st.PendingApprovals) == 0 {
		fmt.Fprintln(w, "Approval requests: none waiting")
	} else {
		fmt.Fprintln(tw, "APPROVAL REQUEST\tACCOUNT\tCLIENT\tAPPROVERS\tDEADLINE\tON TIMEOUT")
		for _, p := range st.PendingApprovals {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.Account, p.Client, strings.Join(p.Approvers, " "), p.Deadline.Format(time.RFC3339), p.OnTimeout)
		}
		_ = tw.Flush()
	}
	fmt.Fprintln(w)
	if len(st.LockedClients) == 0 {
		fmt.Fprintln(w, "Locked clients: none")
	} else {
		fmt.Fprintln(tw, "CLIENT\tFAILURES\tLOCKED UNTIL")
		for _, c := range st.LockedClients {
			until := "-"
			if !c.LockedUntil.IsZero() {
				until = c.LockedUntil.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\n", c.Client, c.Failures, until)
		}
		_ = tw.Flush()
	}
	fmt.Fprintln(w)
	switch {
	case st.LastDrill == nil:
		fmt.Fprintln(w, "Last drill: none recorded")
	case st.LastDrill.OK:
		fmt.Fprintf(w, "Last drill: %s, every channel delivered\n", st.LastDrill.Time.UTC().Format(time.RFC3339))
	default:
		fmt.Fprintf(w, "Last drill: %s, FAILED: %s\n", st.LastDrill.Time.UTC().Format(time.RFC3339), strings.Join(st.LastDrill.failed(), "; "))
		if st.LastGoodDrill != nil {
			fmt.Fprintf(w, "Last good drill: %s\n", st.LastGoodDrill.Time.UTC().Format(time.RFC3339))
		}
	}
	c := st.Settings
	fmt.Fprintf(w, "Settings: state=%s max_attempts=%d lockout=%s code_ttl=%s session_ttl=%s max_concurrent_hashes=%d max_tracked_clients=%d\n",
		c.State, c.MaxAttempts, c.Lockout, c.CodeTTL, c.SessionTTL, c.MaxConcurrentHashes, c.MaxTrackedClients)
}

func unlockCommand() *cobra.Command {
	return adminFlags(subcommand("unlock <ip> [--address <addr>] [--json]",
		"Clear a client's failed attempts (an IPv6 client: its /64)",
		"Calls POST /break_glass/unlock on the admin API of the running Caddy.",
		cobra.ExactArgs(1), cmdUnlock))
}

func cmdUnlock(fl caddycmd.Flags, args []string) (int, error) {
	var v struct {
		Unlocked string `json:"unlocked"`
	}
	if err := adminRequest(fl, http.MethodPost, "/break_glass/unlock", map[string]string{"client": args[0]}, &v); err != nil {
		return 1, err
	}
	if fl.Bool("json") {
		return 0, json.NewEncoder(out).Encode(v)
	}
	_, err := fmt.Fprintf(out, "Unlocked %s: its failed attempts are cleared.\n", v.Unlocked)
	return 0, err
}

func revokeCommand() *cobra.Command {
	c := adminFlags(subcommand("revoke [--email <email>] [--address <addr>] [--json]",
		"End every break-glass session, or those of one email",
		"Calls POST /break_glass/revoke on the admin API of the running Caddy. Sessions issued until now stop working at once (on other instances sharing the storage, at their next refresh).",
		cobra.NoArgs, cmdRevoke))
	c.Flags().String("email", "", "End only the sessions of this break-glass email")
	return c
}

func cmdRevoke(fl caddycmd.Flags, _ []string) (int, error) {
	var v struct {
		Revoked int `json:"revoked"`
	}
	body := map[string]string{}
	if e := fl.String("email"); e != "" {
		body["email"] = e
	}
	if err := adminRequest(fl, http.MethodPost, "/break_glass/revoke", body, &v); err != nil {
		return 1, err
	}
	if fl.Bool("json") {
		return 0, json.NewEncoder(out).Encode(v)
	}
	who := "every break-glass session"
	if e := fl.String("email"); e != "" {
		who = "the break-glass sessions of " + e
	}
	_, err := fmt.Fprintf(out, "Revoked %s issued until now (%d live here).\n", who, v.Revoked)
	return 0, err
}

func decisionCommand(approve bool) *cobra.Command {
	verb, does := "refuse", "Refuses"
	if approve {
		verb, does = "approve", "Approves"
	}
	return adminFlags(subcommand(verb+" <id> [--address <addr>] [--json]",
		does+" a break-glass sign-in waiting for approval, as the host",
		"Calls POST /break_glass/"+verb+" on the admin API of the running Caddy: the team's own way to decide when the approvers' mail is down. The ID is on the operator's waiting page and in `caddy break-glass status`. The decision is final, alerted and audited as the admin's.",
		cobra.ExactArgs(1), func(fl caddycmd.Flags, args []string) (int, error) {
			var v struct {
				ID       string `json:"id"`
				Account  string `json:"account"`
				Decision string `json:"decision"`
			}
			if err := adminRequest(fl, http.MethodPost, "/break_glass/"+verb, map[string]string{"id": args[0]}, &v); err != nil {
				return 1, err
			}
			if fl.Bool("json") {
				return 0, json.NewEncoder(out).Encode(v)
			}
			_, err := fmt.Fprintf(out, "Approval request %s of %s: %s.\n", v.ID, v.Account, v.Decision)
			return 0, err
		}))
}

func totpCommand() *cobra.Command {
	c := subcommand("totp [--email <email>] [--issuer <name>] [--json]",
		"Make a TOTP secret for totp_secret, and its otpauth:// URI",
		`
Prints a new random TOTP secret (160 bits, base32) for the handler's
totp_secret, and the otpauth:// URI to load it into an authenticator app
(as text, or as a QR code made from it). Keep both as secret as the
break-glass password: anyone with the secret and the password can sign in.`,
		cobra.NoArgs, cmdTOTP)
	c.Flags().String("email", "break-glass", "The account name the app shows (the break-glass email)")
	c.Flags().String("issuer", "Caddy break-glass", "The issuer name the app shows")
	return c
}

func cmdTOTP(fl caddycmd.Flags, _ []string) (int, error) {
	secret, err := newTOTPSecret()
	if err != nil {
		return 1, err
	}
	uri := totpURI(secret, fl.String("issuer"), fl.String("email"))
	if fl.Bool("json") {
		return 0, json.NewEncoder(out).Encode(map[string]string{"secret": secret, "uri": uri})
	}
	_, err = fmt.Fprintf(out, "secret: %s\nuri:    %s\n\nPut the secret in the environment (e.g. BREAK_GLASS_TOTP) and use\n  totp_secret {env.BREAK_GLASS_TOTP}\nin the break_glass block.\n", secret, uri)
	return 0, err
}

func verifyAuditCommand() *cobra.Command {
	c := subcommand("verify-audit <path> [--head <sha256>]... [--json]",
		"Check the hash chain of an audit_log file",
		`
Reads an audit_log file and checks every line: its hash against its content,
and its prev against the line before. Prints the number of lines and the
chain head, or the first broken line, and then exits 1.

A line changed with its own hash recomputed shows at the next line (its prev
no longer matches); a file cut, or rewritten from some line on, still
chains. Against that, give the audit_head of alerts with --head (as often as
needed): each must be the hash of a line of the file, or the check fails.
Lines cut short by a crash and recovered by Caddy are listed.`,
		cobra.ExactArgs(1), cmdVerifyAudit)
	c.Flags().StringArray("head", nil, "A chain head kept elsewhere (an alert's audit_head) that must be in the file")
	return c
}

func cmdVerifyAudit(fl caddycmd.Flags, args []string) (int, error) {
	heads, err := fl.GetStringArray("head")
	if err != nil {
		return 1, err
	}
	f, err := os.Open(args[0])
	if err != nil {
		return 1, err
	}
	defer f.Close()
	rep, verr := verifyAudit(f, heads...)
	var missing []string
	for _, h := range heads {
		if _, ok := rep.Found[h]; !ok {
			missing = append(missing, h)
		}
	}
	if verr == nil && len(missing) > 0 {
		verr = fmt.Errorf("the chain head %s is not the hash of any line: the file was changed, cut or rewritten at or before the line it named", strings.Join(missing, ", "))
	}
	if fl.Bool("json") {
		v := map[string]any{"ok": verr == nil, "report": rep}
		if verr != nil {
			v["error"] = verr.Error()
		}
		if err := json.NewEncoder(out).Encode(v); err != nil {
			return 1, err
		}
	}
	if verr != nil {
		return 1, fmt.Errorf("%s: %v", args[0], verr)
	}
	if !fl.Bool("json") {
		fmt.Fprintf(out, "%s: OK, %d lines, chain head %s\n", args[0], rep.Lines, rep.Head)
		for _, h := range heads {
			fmt.Fprintf(out, "head %s is line %d\n", h, rep.Found[h])
		}
		for _, n := range rep.Recovered {
			fmt.Fprintf(out, "line %d was cut short by a crash and recovered (line %d says so)\n", n, n+1)
		}
	}
	return 0, nil
}
