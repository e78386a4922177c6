// The mails the door sends (codes, alerts, drills), made from one pair of
// embedded templates: a text part and an HTML part.

package breakglass

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"strings"
	texttemplate "text/template"
	"time"
)

//go:embed templates/mail.txt templates/mail.html
var mailFS embed.FS

var (
	mailText = texttemplate.Must(texttemplate.New("mail.txt").Funcs(texttemplate.FuncMap{"wrap": wrap}).ParseFS(mailFS, "templates/mail.txt"))
	mailHTML = template.Must(template.ParseFS(mailFS, "templates/mail.html"))
)

// mailContent is what one mail says.
type mailContent struct {
	Subject    string
	Heading    string
	Info       bool   // a heading in blue (a drill), not red
	Code       string // shown large, on its own
	Paragraphs []string
	Rows       []mailRow
	Advice     string
	Alarm      bool // the advice in red
	// Link is a link the mail is for (an approver's), shown as a button
	// with LinkText and in full.
	Link, LinkText string
}

// mailRow is a "Label: value" row, bounded in each part (see alertbounds.go).
type mailRow struct {
	Text string
	HTML template.HTML
}

func (c *mailContent) row(label, value string) {
	c.Rows = append(c.Rows, mailRow{Text: mailTextRow(label, value), HTML: template.HTML(mailHTMLRow(label, value))}) //nolint:gosec // escaped by mailHTMLRow
}

// message renders c as a mail to to.
func (c mailContent) message(to string) mailMessage {
	var text, html bytes.Buffer
	// The templates are ours and their data plain strings: they cannot fail.
	if err := mailText.Execute(&text, c); err != nil {
		panic(err)
	}
	if err := mailHTML.Execute(&html, c); err != nil {
		panic(err)
	}
	return mailMessage{to: to, subject: clip(c.Subject, maxMailSubjectBytes, byteUnit), text: text.String(), html: html.String()}
}

// mailWidth is where wrap breaks a text line.
const mailWidth = 72

// wrap breaks s into lines of at most mailWidth characters at spaces (a
// longer word stays whole).
func wrap(s string) string {
	var b strings.Builder
	n := 0
	for i, w := range strings.Fields(s) {
		if i > 0 {
			if n+1+len(w) > mailWidth {
				b.WriteByte('\n')
				n = 0
			} else {
				b.WriteByte(' ')
				n++
			}
		}
		b.WriteString(w)
		n += len(w)
	}
	return b.String()
}

// codeMail is the mail that carries a code to the break-glass address. It
// says what the code is for, who asked and until when it works, so that an
// unexpected one is recognised as an alarm.
func codeMail(to, code, clientIP, host string, expires time.Time) mailMessage {
	return mailContent{
		Subject: fmt.Sprintf("[break-glass] Your one-time code for %s (requested from %s)", host, clientIP),
		Heading: fmt.Sprintf("Your break-glass one-time code for %s is:", host),
		Code:    code,
		Paragraphs: []string{fmt.Sprintf("It was requested from client IP %s after the break-glass password was entered correctly. "+
			"It works once, only in the browser that asked for it, and expires at %s.", clientIP, formatTime(expires))},
		Advice: "If you did not ask for this code, someone knows the break-glass password: tell your security team and rotate the password now.",
		Alarm:  true,
	}.message(to)
}

// approverMail asks an approver to decide rec, at link (theirs alone).
func approverMail(to string, rec approvalRecord, link string) mailMessage {
	deadline := formatTime(time.Unix(0, rec.Deadline))
	c := mailContent{
		Subject: clip(fmt.Sprintf("[break-glass] Approve or refuse: %s wants to sign in on %s", safeEmail(rec.Account), safeHost(rec.Host)), maxMailSubjectBytes, byteUnit),
		Heading: "A break-glass sign-in waits for your decision.",
		Paragraphs: []string{"Its password and second factor were right. Open the link to see the request and approve or refuse it; opening it decides nothing. " +
			"The first approver to decide decides for everyone."},
		Link: link, LinkText: "Review the request",
		Advice: "Approve only if you know of this emergency and of the person signing in. If you do not, refuse: someone may have the password and second factor.",
		Alarm:  true,
	}
	c.row("Account", rec.Account)
	c.row("Client IP", rec.Client)
	c.row("Site", rec.Host)
	if rec.Reason != "" {
		c.row("Reason", rec.Reason)
	}
	if rec.OnTimeout == onTimeoutGrant {
		c.row("Deadline", deadline+": unless someone refuses by then, access is granted")
	} else {
		c.row("Deadline", deadline+": unless someone approves by then, access is refused")
	}
	return c.message(to)
}

// drillCodeMail is the drill's stand-in for a code mail: it goes where codes
// go, and says plainly that it holds no code.
func drillCodeMail(to, host string, at time.Time) mailMessage {
	return mailContent{
		Subject: fmt.Sprintf("[break-glass DRILL] Code delivery test from %s: no code, nobody signed in", host),
		Heading: "DRILL: break-glass code delivery test",
		Info:    true,
		Paragraphs: []string{
			fmt.Sprintf("This is a test of the break-glass code delivery for %s, run from %s at %s.", to, host, formatTime(at)),
			"In a real sign-in, this mail would hold the 6-digit one-time code. This one holds none: nobody signed in, and nothing needs to be done.",
		},
	}.message(to)
}
