// Package bgtest is the test kit shared by the plugin's unit tests, its
// integration tests (a Caddy in the test process) and the e2e suite (a built
// Caddy binary). It uses the standard library only and does not import the
// plugin, so each of the three can use it.
//
// The sign-in form: the Field* and Step* constants name its fields and
// steps; LoginForm and CodeForm build it.
//
// A Client is a browser without JavaScript: it keeps cookies in a
// net/http/cookiejar (a cookie set with a negative MaxAge is deleted; Path
// and Secure are honoured, so Secure cookies need an https base), never
// follows redirects, and sends Header with every request. Its transport
// decides where requests go:
//
//	bgtest.New(t, bgtest.HandlerTransport(h, "192.0.2.1:40000"), "https://example.com") // in-process
//	bgtest.New(t, bgtest.OverTCP("127.0.0.2"), "http://127.0.0.1:8080")                  // a listening Caddy
//
// so that Login, SubmitCode and SignIn run the same flow against either.
//
// StartWebhook is a webhook receiver that records every request and answers
// with a settable status, or not at all (Hang). ReadLogs and ReadLogFile
// read Caddy's JSON log lines; Logs.Find and WaitLog look for one.
//
// Waiting (Webhook.Wait, WaitEvent, WaitLog) fails the test after
// WaitTimeout: a bound for liveness, never a claim about timing.
package bgtest

import "time"

// WaitTimeout bounds every wait of the kit.
const WaitTimeout = 20 * time.Second
