// Package e2e is the end-to-end suite, behind the e2e build tag:
// go test -tags e2e ./... (harness_test.go says what it needs).
package e2e
