package bgtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"testing"
	"time"
)

// Logs are decoded JSON log lines, in order.
type Logs []map[string]any

// ReadLogs decodes the JSON objects of r, one a line; other lines (a
// process's plain output, a line still being written) are skipped.
func ReadLogs(r io.Reader) Logs {
	var out Logs
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadBytes('\n')
		var m map[string]any
		if json.Unmarshal(line, &m) == nil && m != nil {
			out = append(out, m)
		}
		if err != nil {
			return out
		}
	}
}

// ReadLogFile is ReadLogs of the file at path; none if it does not exist.
func ReadLogFile(path string) Logs {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	return ReadLogs(f)
}

// All are the entries whose "msg" is msg.
func (l Logs) All(msg string) []map[string]any {
	var out []map[string]any
	for _, e := range l {
		if e["msg"] == msg {
			out = append(out, e)
		}
	}
	return out
}

// Find is the first entry whose "msg" is msg and whose fields, printed with
// fmt.Sprint, are these values (a number 500 is "500"); nil if none is.
func (l Logs) Find(msg string, fields map[string]string) map[string]any {
	for _, e := range l.All(msg) {
		ok := true
		for k, v := range fields {
			ok = ok && fmt.Sprint(e[k]) == v
		}
		if ok {
			return e
		}
	}
	return nil
}

// Where are the entries keep says yes to: for a test other than equality,
// such as WaitLog(t, func() Logs { return read().Where(...) }, ...).
func (l Logs) Where(keep func(map[string]any) bool) Logs {
	var out Logs
	for _, e := range l {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

// WaitLog reads the logs again until Find(msg, fields) finds an entry, and
// returns it; the test fails after WaitTimeout.
func WaitLog(t testing.TB, read func() Logs, msg string, fields map[string]string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for {
		if e := read().Find(msg, fields); e != nil {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line %q with %v in %v", msg, fields, WaitTimeout)
			return nil
		}
		time.Sleep(50 * time.Millisecond) // a log file tells no one it grew
	}
}
