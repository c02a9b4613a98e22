package integration

import (
	"strings"
	"testing"
)

// TestDirectoryRootfs: a rootfs from a directory snapshotter (containerd's
// overlayfs) works like a block image: the shim mounts it on the host, as
// the runc shim does, and shares that directory into the VM.
func TestDirectoryRootfs(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		id := h.newID("dirroot")
		args := []string{"run", "--rm", "--runtime", h.rt.runtime, "--snapshotter", "overlayfs"}
		args = append(args, h.fifoFlag()...)
		if h.rt.vm {
			args = append(args, "--runtime-config-path", h.d.vzConfig)
		} else {
			args = append(args, "--runc-root", h.d.runcRoot)
		}
		args = append(args, imageName, id, "sh", "-c", "echo written > /new-file && cat /new-file && ls /bin/busybox && uname -r")
		r := h.ctr(args...)
		if r.code != 0 {
			t.Fatalf("run on an overlayfs snapshot: %s", r)
		}
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if len(lines) != 3 || lines[0] != "written" || lines[1] != "/bin/busybox" {
			t.Errorf("output %q, want the written file, the image's busybox and a kernel release", r.stdout)
		}
		if len(lines) == 3 && h.rt.vm == (lines[2] == suite.hostKernel) {
			t.Errorf("kernel %q: with vm=%v it should %s the host's", lines[2], h.rt.vm, map[bool]string{true: "differ from", false: "equal"}[h.rt.vm])
		}
	})
}
