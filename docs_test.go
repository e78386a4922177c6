package breakglass

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDocsNameOnlyTestsThatExist keeps the README's, SECURITY.md's and
// BENCHMARKS.md's references to tests true: each name (or the prefix a
// `-run` pattern or a `*` stands for) is a test, fuzz target or benchmark of
// this module or of the e2e suite.
func TestDocsNameOnlyTestsThatExist(t *testing.T) {
	files, _ := filepath.Glob("*_test.go")
	e2e, _ := filepath.Glob("e2e/*_test.go")
	funcRE := regexp.MustCompile(`(?m)^func ((?:Test|Fuzz|Benchmark)[A-Za-z0-9_]+)\(`)
	var funcs []string
	for _, f := range append(files, e2e...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range funcRE.FindAllStringSubmatch(string(b), -1) {
			funcs = append(funcs, m[1])
		}
	}
	if len(funcs) < 100 {
		t.Fatalf("found only %d test functions: the pattern is wrong", len(funcs))
	}
	nameRE := regexp.MustCompile(`\b(?:Test|Fuzz|Benchmark)[A-Z][A-Za-z0-9]*`)
	for _, doc := range []string{"README.md", "SECURITY.md", "BENCHMARKS.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range nameRE.FindAllString(string(b), -1) {
			found := false
			for _, f := range funcs {
				if strings.HasPrefix(f, name) {
					found = true
					break
				}
			}
			if !found {
				t.Errorf("%s names %s, which no test is", doc, name)
			}
		}
	}
}
