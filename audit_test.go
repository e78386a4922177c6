// The audit log's hash chain: appending, reopening, and a changed byte, a
// removed line or a cut line found at that line.

package breakglass

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeAudit(t *testing.T, path string, n int) string {
	t.Helper()
	a, err := newAuditLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Destruct()
	var head string
	for i := range n {
		if head, err = a.write(auditRecord{Event: auditRequest, Email: "ops@example.com", Client: "192.0.2.1",
			Method: "GET", Path: fmt.Sprintf("/admin/<%d>", i), Status: 200}); err != nil {
			t.Fatal(err)
		}
	}
	return head
}

func TestAuditChainVerifiesAndContinuesAfterReopening(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	writeAudit(t, path, 3)
	head := writeAudit(t, path, 2) // reopened: the chain goes on
	f, _ := os.Open(path)
	defer f.Close()
	rep, err := verifyAudit(f)
	if err != nil || rep.Lines != 5 || rep.Head != head {
		t.Fatalf("verify: %+v, %v; want 5 lines, head %s", rep, err, head)
	}
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if !strings.Contains(lines[0], `"prev":"`+auditGenesis+`"`) || !strings.Contains(lines[3], `"prev":"`+lineHash([]byte(lines[2]))+`"`) {
		t.Fatalf("the chain does not link the lines:\n%s", b)
	}
}

func TestAuditAnyChangedByteIsFoundAtItsLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	writeAudit(t, path, 4)
	orig, _ := os.ReadFile(path)
	lineOf := func(off int) int { return bytes.Count(orig[:off], []byte{'\n'}) + 1 }
	for off := range orig {
		if orig[off] == '\n' {
			continue
		}
		b := bytes.Clone(orig)
		b[off] ^= 0x01
		_, err := verifyAudit(bytes.NewReader(b))
		if want := fmt.Sprintf("line %d:", lineOf(off)); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Fatalf("byte %d (%q) changed: %v; want an error at %s", off, orig[off], err, want)
		}
	}
}

func TestAuditRemovedMovedOrCutLinesAreFound(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	writeAudit(t, path, 4)
	orig, _ := os.ReadFile(path)
	lines := strings.SplitAfter(string(orig), "\n")[:4]
	for name, c := range map[string]struct {
		text string
		want string
	}{
		"second line removed": {lines[0] + lines[2] + lines[3], "line 2: its prev"},
		"lines swapped":       {lines[0] + lines[2] + lines[1] + lines[3], "line 2: its prev"},
		"first line removed":  {lines[1] + lines[2] + lines[3], "line 1: its prev"},
		"last line cut":       {lines[0] + lines[1] + lines[2] + lines[3][:20], "line 4: cut short"},
		"a line added":        {lines[0] + lines[1] + `{"event":"login"}` + "\n" + lines[2] + lines[3], "line 3: not an audit line"},
	} {
		if _, err := verifyAudit(strings.NewReader(c.text)); err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%s: %v; want %q", name, err, c.want)
		}
	}
	// Dropping the last line is only seen against a head kept elsewhere:
	// the alerts carry it.
	last := lineHash([]byte(strings.TrimSpace(lines[3])))
	rep, err := verifyAudit(strings.NewReader(lines[0]+lines[1]+lines[2]), last)
	if err != nil || rep.Found[last] != 0 {
		t.Fatalf("truncated file: %+v, %v", rep, err)
	}
	if rep, err := verifyAudit(strings.NewReader(string(orig)), last); err != nil || rep.Found[last] != 4 {
		t.Fatalf("whole file: %+v, %v", rep, err)
	}
}

func TestVerifyAuditCommand(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	head := writeAudit(t, path, 3)
	out, err := runCommand(t, verifyAuditCommand(), path)
	if err != nil || !strings.Contains(out, "OK, 3 lines, chain head "+head) {
		t.Fatalf("verify-audit: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(path)
	i := bytes.Index(b, []byte(`/admin/\u003c1\u003e`)) // on line 2
	if i < 0 {
		t.Fatalf("no second request in:\n%s", b)
	}
	b[i+1] = 'x'
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := runCommand(t, verifyAuditCommand(), path); err == nil || !strings.Contains(err.Error(), "line 2:") {
		t.Fatalf("verify-audit of an edited file: %v", err)
	}
}

func TestAuditCutLineAfterACrashIsRecovered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	writeAudit(t, path, 2)
	b, _ := os.ReadFile(path)
	if err := os.WriteFile(path, b[:len(b)-30], 0o600); err != nil { // a crash cut the last line
		t.Fatal(err)
	}
	head := writeAudit(t, path, 1)
	f, _ := os.Open(path)
	defer f.Close()
	rep, err := verifyAudit(f)
	if err != nil || rep.Lines != 4 || len(rep.Recovered) != 1 || rep.Recovered[0] != 2 || rep.Head != head {
		t.Fatalf("after recovery: %+v, %v", rep, err)
	}
	out, err := runCommand(t, verifyAuditCommand(), path)
	if err != nil || !strings.Contains(out, "line 2 was cut short by a crash and recovered (line 3 says so)") {
		t.Fatalf("verify-audit: %v\n%s", err, out)
	}
	// A changed line is not passed off as a crash: "recovered" must chain
	// from exactly that line.
	b, _ = os.ReadFile(path)
	b[5] ^= 1
	if _, err := verifyAudit(bytes.NewReader(b)); err == nil || !strings.HasPrefix(err.Error(), "line 1:") {
		t.Fatalf("a changed first line: %v", err)
	}
}

func TestAuditRotationStartsANewFileThatNamesTheOldHead(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	a, abs, err := openAuditLog(path)
	if err != nil {
		t.Fatal(err)
	}
	oldHead, _ := a.write(auditRecord{Event: auditLogin})
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	// A reload: the new config opens the file before the old one lets go.
	b, _, err := openAuditLog(path)
	if err != nil || b != a {
		t.Fatalf("reopen: %v (shared: %v)", err, b == a)
	}
	if err := closeAuditLog(abs); err != nil {
		t.Fatal(err)
	}
	if _, err := b.write(auditRecord{Event: auditLogout}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = closeAuditLog(abs) })
	for name, want := range map[string]string{path + ".1": "login", path: "chain_continued logout"} {
		raw, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		var events []string
		for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			var m map[string]any
			_ = json.Unmarshal([]byte(l), &m)
			events = append(events, fmt.Sprint(m["event"]))
		}
		if got := strings.Join(events, " "); got != want {
			t.Fatalf("%s: %s, want %s", name, got, want)
		}
		if _, err := verifyAudit(bytes.NewReader(raw)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if name == path && !strings.Contains(string(raw), oldHead) {
			t.Fatalf("the new file does not name the old head %s:\n%s", oldHead, raw)
		}
	}
}

func TestVerifyAuditHeadFlag(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	head := writeAudit(t, path, 3)
	if out, err := runCommand(t, verifyAuditCommand(), path, "--head", head); err != nil || !strings.Contains(out, "head "+head+" is line 3") {
		t.Fatalf("--head of the last line: %v\n%s", err, out)
	}
	// The last line removed: the chain is fine, the head is gone.
	b, _ := os.ReadFile(path)
	cut := b[:bytes.LastIndexByte(b[:len(b)-1], '\n')+1]
	if err := os.WriteFile(path, cut, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := runCommand(t, verifyAuditCommand(), path); err != nil {
		t.Fatalf("the cut file's chain: %v", err)
	}
	if _, err := runCommand(t, verifyAuditCommand(), path, "--head", head); err == nil || !strings.Contains(err.Error(), "is not the hash of any line") {
		t.Fatalf("--head after the last line was removed: %v", err)
	}
}

// forgeLine makes a well-formed audit line, as anyone can (the hashes have
// no key).
func forgeLine(rec auditRecord) string {
	body, _ := json.Marshal(rec)
	return string(body[:len(body)-1]) + `,"hash":"` + lineHash(body) + `"}`
}

func TestForgedRecoveredLinesDoNotHideChangedLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	head := writeAudit(t, path, 10)
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	// Lines 5 and 6 removed; after every later line, a forged "recovered"
	// line chaining from it (and naming the right head before it).
	var out []string
	out = append(out, lines[:4]...)
	for i := 6; i < len(lines); i++ {
		out = append(out, lines[i])
		before := lineHash([]byte(out[len(out)-2]))
		out = append(out, forgeLine(auditRecord{Time: "t", Event: auditRecovered, Before: before, Prev: lineHash([]byte(lines[i]))}))
	}
	rep, err := verifyAudit(strings.NewReader(strings.Join(out, "\n")+"\n"), head)
	if err == nil || !strings.HasPrefix(err.Error(), "line 5: its prev") {
		t.Fatalf("removed lines hidden behind forged recoveries: %+v, %v", rep, err)
	}
}

// faultyFile fails the next write halfway, and (when noUndo) cannot be
// truncated back: a full disk, a quota.
type faultyFile struct {
	*os.File
	failNext, noUndo bool
}

func (f *faultyFile) Write(b []byte) (int, error) {
	if f.failNext {
		f.failNext = false
		n, _ := f.File.Write(b[:len(b)/2])
		return n, fmt.Errorf("write: no space left on device")
	}
	return f.File.Write(b)
}

func (f *faultyFile) Truncate(n int64) error {
	if f.noUndo {
		return fmt.Errorf("truncate: not permitted")
	}
	return f.File.Truncate(n)
}

func TestAFailedWriteIsUndoneOrRecovered(t *testing.T) {
	for _, noUndo := range []bool{false, true} {
		t.Run(fmt.Sprintf("noUndo=%v", noUndo), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			a, err := newAuditLog(path)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Destruct()
			ff := &faultyFile{File: a.f.(*os.File), noUndo: noUndo}
			a.f = ff
			a.write(auditRecord{Event: auditLogin})
			ff.failNext = true
			if _, err := a.write(auditRecord{Event: auditRequest}); err == nil {
				t.Fatal("the failed write reported no error")
			}
			head, err := a.write(auditRecord{Event: auditLogout})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(path)
			rep, err := verifyAudit(bytes.NewReader(b), head)
			if err != nil || rep.Found[head] != rep.Lines {
				t.Fatalf("after a failed write: %+v, %v\n%s", rep, err, b)
			}
			if want := map[bool]int{false: 2, true: 4}[noUndo]; rep.Lines != want || (noUndo && (len(rep.Recovered) != 1 || rep.Recovered[0] != 2)) {
				t.Fatalf("lines %d (want %d), recovered %v\n%s", rep.Lines, want, rep.Recovered, b)
			}
		})
	}
}

func TestAuditFileEmptiedInPlaceStartsANewChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	a, err := newAuditLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Destruct()
	old, _ := a.write(auditRecord{Event: auditLogin})
	if err := os.Truncate(path, 0); err != nil { // logrotate's copytruncate
		t.Fatal(err)
	}
	head, _ := a.write(auditRecord{Event: auditLogout})
	b, _ := os.ReadFile(path)
	rep, err := verifyAudit(bytes.NewReader(b))
	if err != nil || rep.Lines != 2 || rep.Head != head || !strings.Contains(string(b), `"event":"chain_continued"`) || !strings.Contains(string(b), old) {
		t.Fatalf("after copytruncate: %+v, %v\n%s", rep, err, b)
	}
}
