package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNoNICVZOnly: `network = false` in the runtime options gives a VM
// without a NIC; the container still runs, with loopback only.
func TestNoNICVZOnly(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	b, err := os.ReadFile(h.d.vzConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(h.d.dir, "vz-nonic.toml")
	if err := os.WriteFile(cfg, append(b, []byte("network = false\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	id := h.newID("nonic")
	args := []string{"run", "--rm", "--runtime", vzRuntime, "--snapshotter", snapshotter, "--runtime-config-path", cfg}
	args = append(args, h.fifoFlag()...)
	args = append(args, imageName, id, "sh", "-c", "ls /sys/class/net | tr '\\n' ' '")
	r := h.ctr(args...)
	if r.code != 0 {
		t.Fatalf("run without a NIC: %s", r)
	}
	if got := strings.TrimSpace(r.stdout); got != "lo" {
		t.Errorf("interfaces without a NIC: %q, want only lo", got)
	}
}
