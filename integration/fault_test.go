package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Faults with the real stack (SECURITY.md): what a kill -9 or a broken guest image leaves must be
// consistent and, once deleted, nothing. The harness checks for leftovers (processes, mounts,
// disk images, sockets, state, netns, taps) after each subtest. Other faults have tests of their
// own: the VMM killed (TestBackingProcessKilled), the shim killed (TestNetworkCNIShimKilled), a
// corrupt template (TestWarmStartCorruptTemplate), a guest kernel panic (TestHostileGuest/panic).

// killContainerd kills the suite's containerd with SIGKILL and starts it again.
func (h *harness) killContainerd(t *testing.T) {
	t.Helper()
	h.d.end(t, syscall.SIGKILL)
	if err := h.d.startAgain(); err != nil {
		t.Fatal(err)
	}
}

// settle ends task id, whatever state a fault left it in, the way a user would: a task that is
// listed is killed and deleted, then the container is deleted. It fails the test if containerd
// cannot do that.
func (h *harness) settle(t *testing.T, id string) {
	t.Helper()
	if info, ok := h.task(id); ok {
		t.Logf("task %s after the fault: %+v", id, info)
		if r := h.ctr("tasks", "delete", "--force", id); r.code != 0 {
			t.Errorf("tasks delete --force after the fault: %s", r)
		}
	} else {
		t.Logf("task %s after the fault: not listed", id)
	}
	if r := h.ctr("containers", "ls", "-q"); strings.Contains(r.stdout, id) {
		if r := h.ctr("containers", "delete", id); r.code != 0 {
			t.Errorf("containers delete after the fault: %s", r)
		}
	}
}

func TestFaultContainerdKilled(t *testing.T) {
	t.Run("during-create", func(t *testing.T) {
		h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
		id := h.newID("kill-containerd-create")
		ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
		defer cancel()
		run := h.d.ctrCommand(ctx, h.runArgs(detached(), id, "sleep", "600")...)
		if err := run.Start(); err != nil {
			t.Fatal(err)
		}
		// Mid-Create: the shim has launched QEMU, the guest is not serving yet.
		if !waitFor(10*time.Second, func() bool { return h.qemuOf(id) != 0 }) {
			t.Fatal("no VMM for the task within 10s of ctr run")
		}
		h.killContainerd(t)
		err := run.Wait()
		t.Logf("ctr run, whose containerd was killed during Create: %v", err)
		h.settle(t, id)
		if pid := h.qemuOf(id); pid != 0 && !waitFor(leakTimeout, func() bool { return h.qemuOf(id) == 0 }) {
			t.Errorf("the VMM of a task deleted after containerd's restart runs on (pid %d)", pid)
		}
		nextRunWorks(t, h)
	})

	t.Run("during-delete", func(t *testing.T) {
		h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
		id := h.newID("kill-containerd-delete")
		h.ctrOK(h.runArgs(detached(), id, "sleep", "600")...)
		h.ctrOK("tasks", "kill", "--signal", "SIGKILL", id)
		h.waitStatus(id, "STOPPED", 30*time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
		defer cancel()
		del := h.d.ctrCommand(ctx, "tasks", "delete", id)
		if err := del.Start(); err != nil {
			t.Fatal(err)
		}
		// The delete of a stopped VM task takes about 0.2 s here: kill containerd in it.
		time.Sleep(80 * time.Millisecond)
		h.killContainerd(t)
		err := del.Wait()
		t.Logf("ctr tasks delete, whose containerd was killed during it: %v", err)
		h.settle(t, id)
		nextRunWorks(t, h)
	})
}

// qemuOf is the pid of the QEMU that runs task id (its -name), 0 if none.
func (h *harness) qemuOf(id string) int {
	for _, p := range h.d.ownedProcs() {
		if p.isQEMU() && strings.Contains(p.cmdline, id) {
			return p.pid
		}
	}
	return 0
}

func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// nextRunWorks runs a task through the harness's containerd.
func nextRunWorks(t *testing.T, h *harness) {
	t.Helper()
	id := h.newID("after-fault")
	if r := h.ctr(h.runArgs(h.rmFlags(), id, "echo", "next-ok")...); r.code != 0 || r.stdout != "next-ok\n" {
		t.Errorf("the next task: %s", r)
	}
}

// TestFaultBadGuestImage: a VMM that cannot start its guest (no kernel, a kernel that is not one,
// a root disk that is not one, none at all) fails ctr run with an error that says what is wrong,
// and leaves nothing.
func TestFaultBadGuestImage(t *testing.T) {
	junk := filepath.Join(t.TempDir(), "junk")
	b := make([]byte, 4<<20)
	for i := range b {
		b[i] = byte(i*7 + i>>9)
	}
	if err := os.WriteFile(junk, b, 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "no-such-file")
	for _, c := range []struct {
		name, kernel, rootfs string
		want                 []string // the error names one of these
	}{
		{"missing-kernel", missing, suite.bin.rootfs, []string{missing}},
		{"corrupt-kernel", junk, suite.bin.rootfs, []string{"kernel", "linux"}},
		{"missing-rootfs", suite.bin.kernel, missing, []string{missing}},
		{"corrupt-rootfs", suite.bin.kernel, junk, []string{"VFS", "root", "panic"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
			q := strconv.Quote
			cfg := filepath.Join(t.TempDir(), "vz-bad.toml")
			body := "accel = \"tcg\"\nkernel = " + q(c.kernel) + "\nrootfs = " + q(c.rootfs) + "\nwarm_start = false\nboot_timeout = 20\n"
			if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			h.vzConfig = cfg
			id := h.newID("bad-image")
			r := h.ctr(h.runArgs(h.rmFlags(), id, "echo", "hi")...)
			if r.code == 0 {
				t.Fatalf("ctr run with a %s succeeded: %s", c.name, r)
			}
			if !containsAny(strings.ToLower(r.stderr), lower(c.want)) {
				t.Errorf("ctr run with a %s: the error names none of %q:\n%s", c.name, c.want, r.stderr)
			}
			t.Logf("ctr run with a %s failed after %s: %s", c.name, r.elapsed.Round(time.Millisecond), lastLine(r.stderr))
			h.settle(t, id)
		})
	}
}

func lower(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = strings.ToLower(v)
	}
	return out
}

// lastLine is ctr's error: the last line of what it printed.
func lastLine(s string) string {
	s = strings.TrimSpace(s)
	s = s[strings.LastIndex(s, "\n")+1:]
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// TestFaultSnapshotterKilled: the vz snapshotter killed with SIGKILL while it unpacks the tricky
// image (a 100 MiB layer among others): the pull fails, no layer is left half made (every committed
// snapshot is a whole, fsck-clean layer image, nothing else is in the snapshot directories), and
// once the snapshotter is back the same pull works.
func TestFaultSnapshotterKilled(t *testing.T) {
	h := newSnapHarness(t, false)
	layers, img := trickyImage(t)
	ref := h.reg.push(t, "fault-killed", "1", img)
	before := h.s.snapshotDirs()

	ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
	defer cancel()
	pull := h.d.ctrCommand(ctx, "image", "pull", "--plain-http", "--snapshotter", vzSnapshotter, "--platform", "linux/"+runtime.GOARCH, ref)
	if err := pull.Start(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(60*time.Second, func() bool { return len(newPaths(h.s.snapshotDirs(), before)) > 0 }) {
		t.Fatal("the snapshotter made no snapshot within 60s of the pull")
	}
	time.Sleep(300 * time.Millisecond) // into the big layer
	if err := h.s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-h.s.exited
	err := pull.Wait()
	if err == nil {
		t.Log("the pull had finished before the kill: nothing was cut short")
	} else {
		t.Logf("the pull whose snapshotter was killed: %v", err)
	}
	if err := h.d.startSnapshotterAgain(); err != nil {
		t.Fatal(err)
	}
	// containerd's garbage collection of the failed pull may have run while the snapshotter was
	// down ("snapshot garbage collection failed") and is not retried: what it dropped stays until
	// the next removal of a vz snapshot (a user's next rmi; here startSnapshotterAgain's probe).
	h.checkWholeLayers(t, before)

	h.pullAgain(t, ref, before, len(layers))
}

// pullAgain ends a snapshotter fault: the same pull now works and gives one whole layer image per
// layer, and the image then goes without a trace.
func (h *snapHarness) pullAgain(t *testing.T, ref string, before []string, layers int) {
	t.Helper()
	if r := h.pull(vzSnapshotter, ref); r.code != 0 {
		t.Fatalf("the same pull after the fault: %s", r)
	}
	if images := h.checkWholeLayers(t, before); len(images) != layers {
		t.Errorf("%d layer images after the second pull, want %d", len(images), layers)
	}
	h.removeImage(ref)
	if got := h.waitSnapshotDirs(before, 30*time.Second); !slices.Equal(got, before) {
		t.Errorf("snapshot directories after removing the image: %q, want %q", got, before)
	}
}

// checkWholeLayers checks what a failed unpack leaves once containerd has cleaned up after it
// (asynchronously: its garbage collection removes the unpack's snapshots): only committed
// snapshots, each directory made since before holding one fsck-clean layer image and nothing
// else, no more images than snapshots. It returns the layer images.
func (h *snapHarness) checkWholeLayers(t *testing.T, before []string) []string {
	t.Helper()
	var problems, images []string
	waitFor(30*time.Second, func() bool {
		problems, images = nil, nil
		kinds := h.snapshots(vzSnapshotter)
		for key, kind := range kinds {
			if kind != "Committed" {
				problems = append(problems, fmt.Sprintf("snapshot %s is %s", key, kind))
			}
		}
		for _, d := range newPaths(h.s.snapshotDirs(), before) {
			ents, _ := os.ReadDir(d)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			// A committed layer: its image and the differ's record of it (snapshotter/layout.go).
			if !slices.Equal(names, []string{"layer.ext4", "layer.json"}) {
				problems = append(problems, fmt.Sprintf("snapshot directory %s holds %q, not a committed layer", d, names))
				continue
			}
			images = append(images, filepath.Join(d, "layer.ext4"))
		}
		if len(images) > len(kinds) {
			problems = append(problems, fmt.Sprintf("%d layer images but %d snapshots: %q", len(images), len(kinds), images))
		}
		return len(problems) == 0
	})
	for _, p := range problems {
		t.Errorf("30s after the fault: %s", p)
	}
	for _, image := range images {
		if err := fsck(image); err != nil {
			t.Errorf("a committed layer is not whole: %v", err)
		}
	}
	return images
}

// TestFaultSnapshotterDiskFull: the snapshotter's disk fills while it unpacks the tricky image
// (its root on a 48 MiB tmpfs, the image holds a 100 MiB layer): the pull fails saying so, no
// layer is left half made, and once there is space again the same pull works.
func TestFaultSnapshotterDiskFull(t *testing.T) {
	h := newSnapHarness(t, false)
	layers, img := trickyImage(t)
	ref := h.reg.push(t, "fault-full", "1", img)

	small := filepath.Join(h.d.dir, "vz-snapshotter-small")
	if err := os.MkdirAll(small, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", small, "tmpfs", 0, "size=48m,mode=0700"); err != nil {
		t.Fatalf("mount a small tmpfs: %v", err)
	}
	orig := h.s.root
	if err := h.s.signalStop(); err != nil {
		t.Fatal(err)
	}
	h.s.root = small
	t.Cleanup(func() {
		if err := h.s.signalStop(); err != nil {
			t.Error(err)
		}
		h.s.root = orig
		if err := h.d.startSnapshotterAgain(); err != nil {
			t.Error(err)
		}
		if err := syscall.Unmount(small, 0); err != nil {
			t.Errorf("unmount the small tmpfs: %v", err)
		}
		os.Remove(small)
	})
	if err := h.d.startSnapshotterAgain(); err != nil {
		t.Fatal(err)
	}
	before := h.s.snapshotDirs()

	r := h.pull(vzSnapshotter, ref)
	if r.code == 0 {
		t.Fatalf("a 100 MiB layer unpacked into 48 MiB: %s", r)
	}
	if !strings.Contains(r.stderr, "no space left on device") {
		t.Errorf("the pull on a full disk does not say so: %s", r)
	}
	t.Logf("the pull on a full disk: %s", lastLine(r.stderr))
	h.checkWholeLayers(t, before)

	if err := syscall.Mount("tmpfs", small, "tmpfs", syscall.MS_REMOUNT, "size=1g,mode=0700"); err != nil {
		t.Fatalf("grow the tmpfs: %v", err)
	}
	h.pullAgain(t, ref, before, len(layers))
}
