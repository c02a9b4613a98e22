package integration

import (
	"strings"
	"testing"
)

// TestSpecHonoured: user and group, working directory, environment,
// rlimits and tmpfs mounts of the spec reach the container's process in the
// VM as they do with runc. (ctr 2.4 has no flag for sysctls; runc applies
// them from the same spec.)
func TestSpecHonoured(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		id := h.newID("spec")
		flags := h.rmFlags("--user", "1000:1001", "--cwd", "/tmp", "--env", "GREETING=from-the-spec",
			"--rlimit-nofile", "1234:2345", "--mount", "type=tmpfs,src=tmpfs,dst=/scratch,options=size=1m")
		r := h.ctr(h.runArgs(flags, id, "sh", "-c",
			`echo "$(id -u):$(id -g) $(pwd) $GREETING $(ulimit -n) $(ulimit -H -n)"; grep " /scratch " /proc/mounts | cut -d" " -f3`)...)
		if r.code != 0 {
			t.Fatalf("run: %s", r)
		}
		want := "1000:1001 /tmp from-the-spec 1234 2345\ntmpfs"
		if got := strings.TrimSpace(r.stdout); got != want {
			t.Errorf("the process saw %q, want %q", got, want)
		}
	})
}
