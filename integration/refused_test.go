package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRefusedCreateLeavesNoShim: a spec the VM cannot honour (joining a host PID namespace) fails
// Create with an invalid-argument error that names the problem, and no shim stays behind (the
// harness fails the test for any process of this containerd left). containerd takes a
// NotImplemented answer from Create for "no task API v3", and then can neither use nor delete
// the shim.
func TestRefusedCreateLeavesNoShim(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	id := h.newID("refused")
	r := h.ctr(h.runArgs(h.rmFlags("--with-ns", "pid:/proc/1/ns/pid"), id, "true")...)
	if r.code == 0 {
		t.Fatalf("a host PID namespace was accepted: %s", r)
	}
	if !strings.Contains(r.stderr, "host namespaces do not exist in the VM") || strings.Contains(strings.ToLower(r.stderr), "not implemented") {
		t.Errorf("error: %s\nwant the reason, and not a not-implemented class", r.stderr)
	}
	if _, ok := h.task(id); ok {
		h.ctr("tasks", "delete", "--force", id)
	}
	h.ctr("containers", "delete", id)
}

// TestShimDeleteWithoutBundle: containerd's `shim delete` works when the bundle directory is gone
// already, even when it was the shim's working directory (getwd fails): the shim takes the bundle
// from -bundle.
func TestShimDeleteWithoutBundle(t *testing.T) {
	if suite.skipAll != "" || suite.skipVZ != "" {
		t.Skip(skipPrefix + suite.skipAll + suite.skipVZ)
	}
	dir := t.TempDir()
	gone := filepath.Join(dir, "bundle-gone")
	if err := os.Mkdir(gone, 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", `cd "$1" && rmdir "$1" && exec "$2" -namespace vztest-gone -id gone -address "$3" -bundle "$1" delete`,
		"sh", gone, suite.bin.vzShim, filepath.Join(dir, "no.sock"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("shim delete of a bundle that is gone: %v\n%s", err, stderr.String())
	}
	if len(out) == 0 {
		t.Error("shim delete wrote no DeleteResponse")
	}
	if _, err := os.Stat(gone); !os.IsNotExist(err) {
		t.Errorf("shim delete made the bundle directory: %v", err)
	}
}
