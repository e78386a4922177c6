// What an alert may carry: every field of an event is cleaned (no bidi
// control, no line break) and bounded, whatever the request held, and every
// output (mail, slack, discord, generic JSON) is bounded again after its own
// escaping, so that no Host header or reason can break a channel's limits or
// turn into a link.

package breakglass

import (
	"fmt"
	"html"
	"strings"
	"unicode/utf8"
)

// The bounds of the alert fields and outputs, and where each comes from. A
// longer value is cut at a rune boundary and ends with "…" (counted in the
// bound).
const (
	// A DNS name is at most 253 octets in its text form (RFC 1035 §2.3.4:
	// 255 on the wire, less the length octet and the root label).
	maxHostBytes = 253
	// An email address is at most 254 octets (RFC 5321 §4.5.3.1.3: a path
	// of 256 with its angle brackets).
	maxEmailBytes = 254
	// The longest IPv6 text is 45 bytes (INET6_ADDRSTRLEN less its NUL);
	// 64 leaves room for a zone.
	maxIPBytes = 64
	// The login form takes a reason of at most maxReason (200) characters
	// (handler.go).
	maxReasonRunes = maxReason
	// An audit head is a hex SHA-256: 64 characters.
	maxAuditHeadBytes = 64
	// The event, severity and timestamp are ours (an RFC 3339 time in UTC
	// is 20 bytes).
	maxTokenBytes = 64
	// The message is our wording (under 150 characters), the fields above
	// (under 1,000 characters together) and a held-back count.
	maxMessageRunes = 1500
	// Discord: a message's content is at most 2,000 characters (Create
	// Message, "content"); counted here in UTF-16 units, never fewer than
	// the count in code points.
	maxDiscordContent = 2000
	// Slack: text over 40,000 characters is truncated (chat.postMessage);
	// 3,000 is Block Kit's bound on a section's text and more than a
	// notification shows. Counted in UTF-16 units, after the escaping.
	maxSlackText = 3000
	// Mail: a line is at most 998 octets (RFC 5322 §2.1.1). The subject
	// and each body line built from event data stay well under it before
	// any encoding (go-mail folds a header only at its spaces; the body is
	// sent quoted-printable, in lines of at most 76).
	maxMailSubjectBytes = 400
	maxMailLineBytes    = 900
)

// Ways of counting a bound.
func byteUnit(r rune) int { return utf8.RuneLen(r) }
func runeUnit(rune) int   { return 1 }
func utf16Unit(r rune) int {
	if r >= 0x10000 {
		return 2
	}
	return 1
}

const ellipsis = "…"

// clipEscaped is s escaped rune by rune (esc nil: as is), cut so that it
// counts at most limit in unit. A cut falls between two escaped runes, never
// inside an escape or a UTF-8 sequence, and ends with an ellipsis.
func clipEscaped(s string, limit int, esc func(rune) string, unit func(rune) int) string {
	ell := 0
	for _, r := range ellipsis {
		ell += unit(r)
	}
	var b strings.Builder
	n, cut := 0, -1
	for _, r := range s {
		p := string(r)
		if esc != nil {
			p = esc(r)
		}
		k := 0
		for _, pr := range p {
			k += unit(pr)
		}
		if cut < 0 && n+k > limit-ell {
			cut = b.Len() // where an ellipsis would go
		}
		n += k
		if n > limit {
			if limit < ell {
				return ""
			}
			return b.String()[:cut] + ellipsis
		}
		b.WriteString(p)
	}
	return b.String()
}

// clip is s cut to at most limit in unit.
func clip(s string, limit int, unit func(rune) int) string {
	return clipEscaped(s, limit, nil, unit)
}

// isBidiControl says whether r changes the direction of the text around
// it: embeddings and overrides (U+202A–U+202E), isolates (U+2066–U+2069),
// and the marks LRM, RLM and ALM. Such a rune can make an alert read other
// than it is ("Trojan Source").
func isBidiControl(r rune) bool {
	return (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) || r == 0x200e || r == 0x200f || r == 0x061c
}

// cleanText makes s valid UTF-8, drops its bidi controls and turns control
// characters (line breaks, tabs, escapes) into spaces, so that a field stays
// one line that reads as it is.
func cleanText(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case isBidiControl(r):
			return -1
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == 0x2028 || r == 0x2029:
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
}

// Each field of an event, cleaned and bounded.
func safeHost(s string) string  { return clip(cleanText(s), maxHostBytes, byteUnit) }
func safeEmail(s string) string { return clip(cleanText(s), maxEmailBytes, byteUnit) }
func safeIP(s string) string    { return clip(cleanText(s), maxIPBytes, byteUnit) }
func safeToken(s string) string { return clip(cleanText(s), maxTokenBytes, byteUnit) }
func safeReason(s string) string {
	return clip(strings.TrimSpace(cleanText(s)), maxReasonRunes, runeUnit)
}

// clean is ev with every field cleaned and bounded: what every output
// starts from, however the event was made.
func (ev alertEvent) clean() alertEvent {
	ev.Event = safeToken(ev.Event)
	ev.IP = safeIP(ev.IP)
	ev.Timestamp = safeToken(ev.Timestamp)
	ev.Severity = safeToken(ev.Severity)
	ev.Message = clip(cleanText(ev.Message), maxMessageRunes, runeUnit)
	ev.Email = safeEmail(ev.Email)
	ev.Account = safeEmail(ev.Account)
	ev.Host = safeHost(ev.Host)
	ev.Reason = safeReason(ev.Reason)
	ev.AuditHead = clip(cleanText(ev.AuditHead), maxAuditHeadBytes, byteUnit)
	if ap := ev.Approval; ap != nil {
		c := *ap
		c.ID, c.Deadline, c.OnTimeout = safeToken(c.ID), safeToken(c.Deadline), safeToken(c.OnTimeout)
		c.DecidedBy = clip(cleanText(c.DecidedBy), maxEmailBytes+maxIPBytes+16, byteUnit)
		c.Approvers = make([]string, 0, min(len(ap.Approvers), maxApprovers))
		for _, a := range ap.Approvers[:min(len(ap.Approvers), maxApprovers)] {
			c.Approvers = append(c.Approvers, safeEmail(a))
		}
		ev.Approval = &c
	}
	return ev
}

// defangURLs breaks every "://" so that a URL typed in a reason is not made
// a link by a chat's autolinker: "https://evil.example" reads
// "https[:]//evil.example", as threat reports write it.
func defangURLs(s string) string { return strings.ReplaceAll(s, "://", "[:]//") }

// slackEscape escapes what Slack's mrkdwn reads as markup: "<" and ">"
// delimit links (<url|text>) and mentions (<!channel>, <@U…>), "&" starts
// an entity, as its API asks. Slack has no escape for *, _, ~ and `, so
// those may still format text, but never make a link or a mention.
func slackEscape(r rune) string {
	switch r {
	case '&':
		return "&amp;"
	case '<':
		return "&lt;"
	case '>':
		return "&gt;"
	}
	return string(r)
}

// discordEscape backslash-escapes what Discord's markdown reads as markup:
// masked links [text](url), emphasis, strike, code, spoilers, quotes,
// headings and <…> mentions, channels and timestamps. (Mentions are also
// disabled by allowed_mentions.) A backslash before punctuation shows the
// character as it is.
func discordEscape(r rune) string {
	if strings.ContainsRune("\\*_~`|><[]()#", r) {
		return "\\" + string(r)
	}
	return string(r)
}

// chatText is the event as one line of chat: a fixed prefix, the message
// (URLs defanged, escaped with esc, cut to what is left of limit) and the
// audit head. ev must be clean.
func (ev alertEvent) chatText(limit int, unit func(rune) int, esc func(rune) string) string {
	prefix := ":rotating_light: "
	if ev.Severity != "critical" {
		prefix = ":warning: "
	}
	if ev.Severity == "info" {
		prefix = ":information_source: "
	}
	prefix += "[break-glass] "
	suffix := ""
	if ev.AuditHead != "" {
		suffix = " (audit head " + clipEscaped(ev.AuditHead, 2*maxAuditHeadBytes, esc, unit) + ")"
	}
	room := limit
	for _, r := range prefix + suffix {
		room -= unit(r)
	}
	return prefix + clipEscaped(defangURLs(ev.Message), max(room, 0), esc, unit) + suffix
}

// mailTextRow is one "Label: value" line of an alert mail's text, bounded.
func mailTextRow(label, value string) string {
	head := fmt.Sprintf("%-11s ", label+":")
	return head + clip(value, maxMailLineBytes-len(head), byteUnit) + "\n"
}

// mailHTMLRow is one table row of an alert mail's HTML, bounded after the
// HTML escaping.
func mailHTMLRow(label, value string) string {
	open := `<tr><th align="left">` + html.EscapeString(label) + `</th><td>`
	const end = "</td></tr>\n"
	return open + clipEscaped(value, maxMailLineBytes-len(open)-len(end), func(r rune) string { return html.EscapeString(string(r)) }, byteUnit) + end
}
