// The audit log's hash chain: appending, reopening, and a changed byte, a
// removed line or a cut line found at that line; one file written by two
// processes, or through two paths, keeps one chain.

package breakglass

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
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

// newTestAudit is an audit log on a new file, closed at the test's end,
// and the file's path.
func newTestAudit(t testing.TB) (*auditLog, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	a, err := newAuditLog(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Destruct() })
	return a, path
}

// verifyAuditFile is verifyAudit of the file at path, and what it read.
func verifyAuditFile(path string, heads ...string) (auditReport, []byte, error) {
	b, _ := os.ReadFile(path)
	rep, err := verifyAudit(bytes.NewReader(b), heads...)
	return rep, b, err
}

// crashAndAppend cuts the last line of the file at path short, as a crash
// does, appends a line and checks the recovery: 4 lines, line 2 the cut one.
func crashAndAppend(t *testing.T, path string) {
	t.Helper()
	b, _ := os.ReadFile(path)
	if err := os.WriteFile(path, b[:len(b)-30], 0o600); err != nil {
		t.Fatal(err)
	}
	head := writeAudit(t, path, 1)
	if rep, _, err := verifyAuditFile(path); err != nil || rep.Lines != 4 || len(rep.Recovered) != 1 || rep.Recovered[0] != 2 || rep.Head != head {
		t.Fatalf("after recovery: %+v, %v", rep, err)
	}
}

func TestAuditChainVerifiesAndContinuesAfterReopening(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	writeAudit(t, path, 3)
	head := writeAudit(t, path, 2) // reopened: the chain goes on
	rep, b, err := verifyAuditFile(path)
	if err != nil || rep.Lines != 5 || rep.Head != head {
		t.Fatalf("verify: %+v, %v; want 5 lines, head %s", rep, err, head)
	}
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

func TestAuditCutLineAfterACrashIsRecovered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	writeAudit(t, path, 2)
	crashAndAppend(t, path)
	out, err := runCommand(t, verifyAuditCommand(), path)
	if err != nil || !strings.Contains(out, "line 2 was cut short by a crash and recovered (line 3 says so)") {
		t.Fatalf("verify-audit: %v\n%s", err, out)
	}
	// A changed line is not passed off as a crash: "recovered" must chain
	// from exactly that line.
	b, _ := os.ReadFile(path)
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
		if got := auditEvents(raw); got != want {
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

// auditEvents are the events of an audit file's lines, in order, between
// spaces.
func auditEvents(b []byte) string {
	var events []string
	for _, m := range bgtest.ReadLogs(bytes.NewReader(b)) {
		events = append(events, fmt.Sprint(m["event"]))
	}
	return strings.Join(events, " ")
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
			a, path := newTestAudit(t)
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
			rep, b, err := verifyAuditFile(path, head)
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
	a, path := newTestAudit(t)
	old, _ := a.write(auditRecord{Event: auditLogin})
	if err := os.Truncate(path, 0); err != nil { // logrotate's copytruncate
		t.Fatal(err)
	}
	head, _ := a.write(auditRecord{Event: auditLogout})
	rep, b, err := verifyAuditFile(path)
	if err != nil || rep.Lines != 2 || rep.Head != head || !strings.Contains(string(b), `"event":"chain_continued"`) || !strings.Contains(string(b), old) {
		t.Fatalf("after copytruncate: %+v, %v\n%s", rep, err, b)
	}
}

// auditHelperEnv names the file that TestAuditHelperProcess appends to.
const auditHelperEnv = "BREAK_GLASS_AUDIT_HELPER"

// auditPerWriter is how many lines each writer appends in the tests of
// shared files.
const auditPerWriter = 200

// TestAuditHelperProcess is the other process of
// TestAuditTwoProcessesAppendingToOneFileKeepOneChain; run by itself, it
// does nothing. It opens the file and says "ready"; on "go" it appends half
// its lines and says "half"; on "half" (the other process has appended its
// first half) it appends the rest.
func TestAuditHelperProcess(t *testing.T) {
	path := os.Getenv(auditHelperEnv)
	if path == "" {
		return
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	a, abs, err := openAuditLog(path)
	if err != nil {
		fail(err)
	}
	in := bufio.NewReader(os.Stdin)
	fmt.Println("ready")
	for i := range auditPerWriter {
		if i == 0 || i == auditPerWriter/2 {
			if i > 0 {
				fmt.Println("half")
			}
			if _, err := in.ReadString('\n'); err != nil {
				fail(err)
			}
		}
		if _, err := a.write(auditRecord{Event: auditRequest, Method: "GET", Path: fmt.Sprintf("/child/%d", i), Status: 200}); err != nil {
			fail(err)
		}
	}
	if err := closeAuditLog(abs); err != nil {
		fail(err)
	}
	os.Exit(0)
}

// auditPaths counts the lines of an audit file by the first part of their
// path ("/child/1": "child"), and the runs of lines of one writer.
func auditPaths(t *testing.T, b []byte) (n map[string]int, runs int) {
	t.Helper()
	n = map[string]int{}
	last := ""
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var rec auditRecord
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		w := strings.Split(rec.Path, "/")[1]
		if w != last {
			runs++
		}
		n[w]++
		last = w
	}
	return n, runs
}

func TestAuditTwoProcessesAppendingToOneFileKeepOneChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	a, abs, err := openAuditLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAuditLog(abs)
	cmd := exec.Command(os.Args[0], "-test.run=^TestAuditHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), auditHelperEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Both processes have the file open before either appends; both append
	// at once, and each appends its second half only after the other
	// appended its first: the lines interleave.
	sc := bufio.NewScanner(stdout)
	await := func(word string) {
		for sc.Scan() {
			if sc.Text() == word {
				return
			}
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("the other process did not say %q: %v\n%s", word, sc.Err(), stderr.Bytes())
	}
	await("ready")
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	for i := range auditPerWriter {
		if i == auditPerWriter/2 {
			if _, err := io.WriteString(stdin, "half\n"); err != nil {
				t.Fatal(err)
			}
			await("half")
		}
		if _, err := a.write(auditRecord{Event: auditRequest, Method: "GET", Path: fmt.Sprintf("/parent/%d", i), Status: 200}); err != nil {
			t.Fatal(err)
		}
	}
	_ = stdin.Close()
	drained := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, stdout); close(drained) }()
	<-drained
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the other process: %v\n%s", err, stderr.Bytes())
	}
	rep, b, err := verifyAuditFile(path)
	if err != nil || rep.Lines != 2*auditPerWriter {
		t.Fatalf("after two processes appended: %+v, %v (want %d lines)", rep, err, 2*auditPerWriter)
	}
	if n, runs := auditPaths(t, b); n["parent"] != auditPerWriter || n["child"] != auditPerWriter || runs < 3 {
		t.Fatalf("lines per process: %v, in %d runs (want at least 3: interleaved)", n, runs)
	}
}

func TestAuditOneFileThroughASymlinkedDirectoryKeepsOneChain(t *testing.T) {
	dir, link := symlinkedDir(t)
	var hs []testHandler
	for _, p := range []string{filepath.Join(dir, "audit.jsonl"), filepath.Join(link, "audit.jsonl")} {
		h := newTestHandler(t, nil, func(h *Handler) { h.AuditLog = p })
		t.Cleanup(func() { _ = h.Cleanup() })
		hs = append(hs, h)
	}
	var wg sync.WaitGroup
	for i, h := range hs {
		wg.Go(func() {
			for j := range auditPerWriter {
				h.audit(auditRecord{Event: auditRequest, Method: "GET", Path: fmt.Sprintf("/h%d/%d", i, j), Status: 200})
			}
		})
	}
	wg.Wait()
	for _, h := range hs {
		if failed := h.logs.Logs().All("break-glass: writing the audit log"); len(failed) > 0 {
			t.Fatalf("%d failed writes: %v", len(failed), failed[0])
		}
	}
	rep, b, err := verifyAuditFile(filepath.Join(dir, "audit.jsonl"))
	if err != nil || rep.Lines != 2*auditPerWriter {
		t.Fatalf("after two handlers appended, by two paths: %+v, %v (want %d lines)", rep, err, 2*auditPerWriter)
	}
	if n, _ := auditPaths(t, b); n["h0"] != auditPerWriter || n["h1"] != auditPerWriter {
		t.Fatalf("lines per handler: %v", n)
	}
	if hs[0].auditLog != hs[1].auditLog {
		t.Fatal("the two paths to one file have two writers")
	}
}

func TestAuditLongLinesAreClippedAndTheTailIsReadAcrossChunks(t *testing.T) {
	a, path := newTestAudit(t)
	// A 2 MiB path, each byte escaped to six: clipped, the line stays short
	// enough for the next append to find its end.
	if _, err := a.write(auditRecord{Event: auditRequest, Path: "/" + strings.Repeat("<", 2<<20)}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.write(auditRecord{Event: auditRequest, Path: "/" + strings.Repeat("é", 20<<10)}); err != nil {
		t.Fatal(err)
	}
	a.Destruct()
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 2 || len(lines[0]) >= auditMaxLine || !strings.Contains(lines[0], "…[2080769 more bytes]") || !strings.Contains(lines[1], "é…[") {
		t.Fatalf("%d lines, the first of %d bytes: %.200s", len(lines), len(lines[0]), lines[0])
	}
	// The last line cut by a crash: the line before it (of many 4 KiB
	// chunks) is what the "recovered" line names.
	crashAndAppend(t, path)
}

func TestAuditRotationThroughASymlinkedDirectoryKeepsOneWriter(t *testing.T) {
	dir, link := symlinkedDir(t)
	real, via := filepath.Join(dir, "audit.jsonl"), filepath.Join(link, "audit.jsonl")
	var opened []string
	open := func(p string) *auditLog {
		a, abs, err := openAuditLog(p)
		if err != nil {
			t.Fatal(err)
		}
		opened = append(opened, abs)
		return a
	}
	t.Cleanup(func() {
		for _, abs := range opened {
			_ = closeAuditLog(abs)
		}
	})
	a := open(real)
	if open(via) != a {
		t.Fatal("two writers for one file")
	}
	oldHead, _ := a.write(auditRecord{Event: auditLogin})
	if err := os.Rename(real, real+".1"); err != nil {
		t.Fatal(err)
	}
	// The reload opens the new file by the symlinked path first, then by
	// the real one: one writer, one chain_continued.
	if open(via) != a || open(real) != a {
		t.Fatal("the rotated file has another writer")
	}
	if _, err := a.write(auditRecord{Event: auditLogout}); err != nil {
		t.Fatal(err)
	}
	if _, b, err := verifyAuditFile(real); err != nil || strings.Count(string(b), `"event":"chain_continued"`) != 1 || !strings.Contains(string(b), oldHead) {
		t.Fatalf("the new file: %v\n%s", err, b)
	}
	// The new file's identity is the writer's: yet another path to it
	// shares it too.
	hard := filepath.Join(dir, "audit-hard.jsonl")
	if err := os.Link(real, hard); err != nil {
		t.Skipf("no hard links here: %v", err)
	}
	if open(hard) != a {
		t.Fatal("a hard link to the new file has another writer")
	}
}

// symlinkedDir makes a folder and a symbolic link to it.
func symlinkedDir(t *testing.T) (dir, link string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "logs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	link = filepath.Join(t.TempDir(), "logs-link")
	if err := os.Symlink(dir, link); err != nil {
		t.Skipf("no symbolic links here: %v", err)
	}
	return dir, link
}
