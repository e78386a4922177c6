// Checking an audit log (`caddy break-glass verify-audit`): every line's
// hash and link to the line before, and the recovery lines that may follow
// a cut.

package breakglass

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// errAuditFormat is a line that is not an audit record.
var errAuditFormat = errors.New("not an audit line")

// auditReport is what verifyAudit found in a whole file.
type auditReport struct {
	Lines     int            `json:"lines"`
	Head      string         `json:"head"`
	Recovered []int          `json:"recovered,omitempty"` // lines cut short by a crash, and recovered
	Found     map[string]int `json:"found,omitempty"`     // the heads looked for: the line whose hash each is
}

// verifyAudit checks a whole audit log: each line's hash against its
// content, and its prev against the line before. A line cut short by a
// crash passes only when the writer recovered from it (the next line is
// "recovered" and chains from it). It also notes at which line each of
// heads (chain heads kept elsewhere, such as an alert's audit_head) is. It
// returns an error naming the first broken line.
func verifyAudit(r io.Reader, heads ...string) (auditReport, error) {
	rep := auditReport{Head: auditGenesis, Found: map[string]int{}}
	want := map[string]bool{}
	for _, h := range heads {
		want[h] = true
	}
	rd := bufio.NewReader(r)
	readLine := func() ([]byte, bool, error) {
		line, err := rd.ReadBytes('\n')
		if len(line) == 0 && err == io.EOF {
			return nil, false, io.EOF
		}
		if err != nil && err != io.EOF {
			return nil, false, err
		}
		whole := line[len(line)-1] == '\n'
		if whole {
			line = line[:len(line)-1]
		}
		return line, whole, nil
	}
	line, whole, err := readLine()
	for err == nil {
		rep.Lines++
		n := rep.Lines
		next, nextWhole, nextErr := readLine()
		bad := checkAuditLine(line, rep.Head)
		if !whole {
			bad = errors.New("cut short (no end of line)")
		}
		if bad != nil {
			// Only a line that is not a whole record can be one cut by a
			// crash; a whole one with a wrong hash or prev was changed.
			cut := !whole || errors.Is(bad, errAuditFormat)
			if !cut || nextErr != nil || !nextWhole || !recovers(next, line, rep.Head) {
				return rep, fmt.Errorf("line %d: %w", n, bad)
			}
			rep.Recovered = append(rep.Recovered, n)
		}
		rep.Head = lineHash(line)
		if want[rep.Head] {
			rep.Found[rep.Head] = n
		}
		line, whole, err = next, nextWhole, nextErr
	}
	if err != io.EOF {
		return rep, err
	}
	return rep, nil
}

// recovers reports whether next is a valid "recovered" line chaining from
// the cut line before it, and naming the head before that line.
func recovers(next, cut []byte, before string) bool {
	if checkAuditLine(next, lineHash(cut)) != nil {
		return false
	}
	var rec auditRecord
	return json.Unmarshal(next, &rec) == nil && rec.Event == auditRecovered && rec.Before == before
}

func checkAuditLine(line []byte, prev string) error {
	const tail = `"}`
	i := bytes.LastIndex(line, []byte(`,"hash":"`))
	if i < 0 || !bytes.HasSuffix(line, []byte(tail)) || len(line)-i != len(`,"hash":"`)+64+len(tail) {
		return errAuditFormat
	}
	want := string(line[i+len(`,"hash":"`) : len(line)-len(tail)])
	body := append(append([]byte(nil), line[:i]...), '}')
	if lineHash(body) != want {
		return errors.New("its content does not match its hash (the line was changed)")
	}
	var rec auditRecord
	if err := json.Unmarshal(body, &rec); err != nil {
		return errAuditFormat
	}
	if rec.Prev != prev {
		return errors.New("its prev is not the hash of the line before (a line was removed, added or moved)")
	}
	return nil
}
