package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"testing"
)

// TestMain runs main instead of the tests in the child processes of
// runMain.
func TestMain(m *testing.M) {
	if os.Getenv("DARWINCHECK_RUN_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runMain(t *testing.T, args ...string) (exitCode int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "DARWINCHECK_RUN_MAIN=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

func TestExitStatus(t *testing.T) {
	code, out, errs := runMain(t, "-arch", "arm64", "../../internal/darwincheck/testdata/badvz")
	if code != 1 {
		t.Errorf("exit status %d, want 1\n%s%s", code, out, errs)
	}
	if !regexp.MustCompile(`darwin/arm64: \S*testdata/badvz/badvz\.go:10:12: vm\.StartNow undefined`).MatchString(errs) {
		t.Errorf("stderr %q, want file:line:col: naming StartNow", errs)
	}

	code, out, errs = runMain(t, "-arch", "arm64", "../../internal/darwincheck/testdata/goodvz")
	if code != 0 || errs != "" {
		t.Errorf("exit status %d, stderr %q, want 0 and nothing", code, errs)
	}
	if !regexp.MustCompile(`darwin/arm64: \d+ packages type-checked, 0 errors in our module`).MatchString(out) {
		t.Errorf("stdout %q", out)
	}
}
