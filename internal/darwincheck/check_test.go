package darwincheck

import (
	"context"
	"os/exec"
	"strings"
	"testing"
)

func check(t *testing.T, arch string, patterns ...string) *Result {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	res, err := Check(context.Background(), Options{GOARCH: arch, Patterns: patterns})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.DepErrors) != 0 {
		t.Errorf("errors in dependencies: %q", res.DepErrors)
	}
	return res
}

// The fixtures live under testdata, which ./... skips; go list takes them
// by explicit path.
func TestCheckFindsWrongVzCall(t *testing.T) {
	res := check(t, "arm64", "./testdata/badvz")
	if len(res.Errors) != 1 {
		t.Fatalf("errors %q, want one", res.Errors)
	}
	e := res.Errors[0]
	if !strings.HasPrefix(e, "testdata/badvz/badvz.go:10:12: ") || !strings.Contains(e, "StartNow") {
		t.Errorf("error %q, want file:line:col naming StartNow", e)
	}
	t.Log(e)
}

func TestCheckPassesRightVzCall(t *testing.T) {
	for _, arch := range []string{"arm64", "amd64"} {
		res := check(t, arch, "./testdata/goodvz")
		if len(res.Errors) != 0 {
			t.Errorf("darwin/%s: errors %q", arch, res.Errors)
		}
		// vz, its dependencies and the standard library.
		if res.Checked < 50 {
			t.Errorf("darwin/%s: only %d packages checked", arch, res.Checked)
		}
	}
}

// A package that does not build for darwin is reported where it is
// imported unless it is excluded.
func TestCheckExclude(t *testing.T) {
	res, err := Check(context.Background(), Options{GOARCH: "arm64", Patterns: []string{"./testdata/goodvz", "./testdata/linuxonly"}, Exclude: []string{"./testdata/linuxonly"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 0 {
		t.Errorf("errors %q", res.Errors)
	}
	res = check(t, "arm64", "./testdata/linuxonly")
	if len(res.Errors) == 0 || !strings.Contains(strings.Join(res.Errors, "\n"), "unix.InotifyInit1") {
		t.Errorf("errors %q, want one naming unix.InotifyInit1", res.Errors)
	}
}
