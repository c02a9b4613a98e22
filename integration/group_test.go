package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// groupAnnotation puts containers in one shim and one VM (shim/group.go), as CRI's sandbox id
// does for a pod.
const groupAnnotation = "io.containerd.vz.v1.group"

// TestGroupOneVM: the containers of one group run in one VM (one shim, one QEMU): the later ones'
// rootfs is hot-plugged into the running VM, they share the VM's network (b reaches a's server
// on localhost) but not their files, b joins a's PID namespace by the host path CRI would give
// (/proc/<task pid>/ns/pid, the VMM's), and the VM outlives the first container and ends with
// the last (the harness checks for leaks).
func TestGroupOneVM(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	group := "--annotation=" + groupAnnotation + "=pod-" + strconv.Itoa(idCounter)
	a, b, c := h.newID("group-a"), h.newID("group-b"), h.newID("group-c")
	h.ctrOK(h.runArgs(append(detached(), group), a, webServer("page-of-a")...)...)
	qemu := h.findQEMU(a)
	h.ctrOK(h.runArgs(append(detached(), group, "--with-ns", "pid:/proc/"+itoa(qemu.pid)+"/ns/pid"), b, "sleep", "600")...)
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "in"), []byte("from-the-host"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.ctrOK(h.runArgs(append(detached(), group, "--mount", "type=bind,src="+data+",dst=/data,options=rbind:rw"), c, "sleep", "600")...)

	var qemus, shims int
	for _, p := range h.d.ownedProcs() {
		if p.isQEMU() {
			qemus++
		}
		if strings.Contains(p.cmdline, "containerd-shim-vz-v1") {
			shims++
		}
	}
	if qemus != 1 || shims != 1 {
		t.Errorf("%d QEMU and %d shim processes for three containers of one group, want one each", qemus, shims)
	}
	for _, id := range []string{a, b, c} {
		if info, ok := h.task(id); !ok || info.pid != qemu.pid || info.status != "RUNNING" {
			t.Errorf("task %s: %+v, want RUNNING with the VMM's pid %d", id, info, qemu.pid)
		}
	}
	if got := h.execOK(b, "fetch", "wget", "-q", "-O", "-", "http://127.0.0.1/"); strings.TrimSpace(got) != "page-of-a" {
		t.Errorf("b fetching a's server on localhost: %q", got)
	}
	if ps := h.execOK(b, "ps", "ps", "-o", "comm"); !strings.Contains(ps, "httpd") {
		t.Errorf("b does not see a's processes in the PID namespace it joined:\n%s", ps)
	}
	h.execOK(b, "write", "touch", "/only-in-b")
	if r := h.ctr("tasks", "exec", "--exec-id", "look", a, "test", "-e", "/only-in-b"); r.code == 0 {
		t.Error("a sees a file b wrote in its own rootfs")
	}

	// c's bind mount reaches the running VM through the pod share.
	if got := h.execOK(c, "read", "cat", "/data/in"); got != "from-the-host" {
		t.Errorf("c reading its bind mount: %q", got)
	}
	h.execOK(c, "write-data", "sh", "-c", "echo from-c > /data/out")
	if b, err := os.ReadFile(filepath.Join(data, "out")); err != nil || string(b) != "from-c\n" {
		t.Errorf("the host reading what c wrote: %q, %v", b, err)
	}
	if ps := h.execOK(c, "ps", "ps", "-o", "comm"); strings.Contains(ps, "httpd") {
		t.Errorf("c, with a PID namespace of its own, sees a's processes:\n%s", ps)
	}

	// b dies with a, whose PID namespace it shares (as a pod's containers die with the pause
	// container); c goes on in the VM.
	h.killAndRemove(b)
	h.killAndRemove(a)
	// The VM's state was in a's bundle, which containerd removed with a: the VM is not
	// abandoned while c's is there. Past the shim's check for that (every 5 s).
	time.Sleep(6 * time.Second)
	if got := h.execOK(c, "alive", "echo", "still-here"); strings.TrimSpace(got) != "still-here" {
		t.Errorf("c after a and b were deleted: %q", got)
	}
	if p := h.findQEMU(c); p.pid != qemu.pid {
		t.Errorf("the VM changed: %d, want %d", p.pid, qemu.pid)
	}
	h.killAndRemove(c)
	// Nothing removed a host file through the pod share's bind mounts.
	if b, err := os.ReadFile(filepath.Join(data, "in")); err != nil || string(b) != "from-the-host" {
		t.Errorf("the host's bound directory after the group is gone: %q, %v", b, err)
	}
}
