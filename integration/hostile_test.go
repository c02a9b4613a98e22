package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The hostile guest: the agent's hostile test build (agent/faults_hostile.go, go build -tags
// hostile) booted with vz.hostile=<mode>, one misdeed per mode, against the real shim, containerd
// and QEMU. For each: the shim stays within shimMemoryBound, containerd gets an answer (an exit or
// a clear error), and the next task, on the ordinary guest, works; the harness checks that
// nothing is left.

// shimMemoryBound is the most resident memory (peak, VmHWM) a shim may reach while its guest
// misbehaves. An ordinary shim peaks at about 19 MiB (make soak).
const shimMemoryBound = 64 << 10 // KiB

var hostileGuest struct {
	once   sync.Once
	rootfs string
	err    error
}

// hostileRootfs builds, once per run, the root disk whose /init is the hostile build of the agent,
// with the ordinary guest's kernel and runc (make guest).
func hostileRootfs(t *testing.T) string {
	t.Helper()
	hostileGuest.once.Do(func() {
		hostileGuest.rootfs, hostileGuest.err = buildHostileRootfs(suite.d.dir)
	})
	if hostileGuest.err != nil {
		t.Fatalf("building the hostile guest: %v", hostileGuest.err)
	}
	return hostileGuest.rootfs
}

func buildHostileRootfs(dir string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "hostile-guest")
	agent := filepath.Join(out, "vz-agent")
	build := exec.Command("go", "build", "-tags", "hostile", "-trimpath", "-o", agent, "./cmd/vz-agent")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if b, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -tags hostile: %v\n%s", err, b)
	}
	image := exec.Command(filepath.Join(root, "_output", "bin", "vz-guest"),
		"-kernel", filepath.Join(root, "_output", "kernel", runtime.GOARCH, "kernel"), "-rootfs",
		"-agent", agent, "-runc", filepath.Join(root, "_output", "runc", runtime.GOARCH, "runc"),
		"-arch", runtime.GOARCH, "-out", out)
	if b, err := image.CombinedOutput(); err != nil {
		return "", fmt.Errorf("vz-guest (needs make guest): %v\n%s", err, b)
	}
	return filepath.Join(out, "rootfs"), nil
}

// hostileHarness is a harness of the vz runtime whose VMs boot the hostile guest in mode.
func hostileHarness(t *testing.T, mode string) *harness {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	q := strconv.Quote
	cfg := filepath.Join(t.TempDir(), "vz-hostile.toml")
	body := "accel = \"tcg\"\nkernel = " + q(h.d.bin.kernel) + "\nrootfs = " + q(hostileRootfs(t)) +
		"\nkernel_args = [" + q("vz.hostile="+mode) + "]\nwarm_start = false\n"
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	h.vzConfig = cfg
	return h
}

// check stops the sampling and fails the test if a shim went past shimMemoryBound.
func (p *peaks) check(t *testing.T) {
	t.Helper()
	p.stop()
	kib := p.shimHWMKiB
	if kib == 0 {
		t.Errorf("no shim seen while the guest misbehaved")
	}
	if kib > shimMemoryBound {
		t.Errorf("the shim's peak memory was %d KiB, over the bound of %d KiB", kib, shimMemoryBound)
	}
	t.Logf("shim peak memory (VmHWM): %.1f MiB", float64(kib)/1024)
}

// nextTaskWorks runs a task on the ordinary guest: what a hostile guest did must not reach it.
func nextTaskWorks(t *testing.T) {
	t.Helper()
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	id := h.newID("after-hostile")
	if r := h.ctr(h.runArgs(h.rmFlags(), id, "echo", "next-ok")...); r.code != 0 || r.stdout != "next-ok\n" {
		t.Errorf("the next task, on the ordinary guest: %s", r)
	}
}

// forget removes what a task whose guest misbehaved left to containerd, without judging how it
// ended (the case does).
func (h *harness) forget(id string) {
	h.ctr("tasks", "delete", "--force", id)
	h.ctr("containers", "delete", id)
}

// containerdLog is the containerd log written since the harness began.
func (h *harness) containerdLog() string {
	return h.d.logSince(h.logStart)
}

// detachedUnder runs a detached task on the hostile guest in mode, lets the case do its part,
// checks that an exec still works and the shim's peak memory, and removes the task.
func detachedUnder(t *testing.T, mode string, check func(h *harness, id string)) {
	h := hostileHarness(t, mode)
	peak := h.samplePeaks(50 * time.Millisecond)
	id := h.newID("hostile-" + mode)
	h.ctrOK(h.runArgs(detached(), id, "sleep", "600")...)
	check(h, id)
	if got := h.execOK(id, "after", "echo", "exec-ok"); got != "exec-ok\n" {
		t.Errorf("exec in a guest that misbehaves (%s): %q", mode, got)
	}
	peak.check(t)
	h.killAndRemove(id)
}

func TestHostileGuest(t *testing.T) {
	t.Run("events", func(t *testing.T) {
		// 20000 forged events before any true one: exits and OOMs of a task in no VM of
		// ours, the same under other topics, container events, 3300 port announcements,
		// undecodable ones.
		h := hostileHarness(t, "events")
		seen := h.d.watchEvents(t, "victim")
		peak := h.samplePeaks(50 * time.Millisecond)
		id := h.newID("hostile-events")
		r := h.ctr(h.runArgs(h.rmFlags(), id, "echo", "hi")...)
		peak.check(t)
		if r.code != 0 || r.stdout != "hi\n" {
			t.Errorf("the task under a flood of forged events: %s", r)
		}
		select {
		case ev := <-seen:
			t.Errorf("containerd saw a forged event: %s", ev)
		case <-time.After(500 * time.Millisecond):
		}
		if n := strings.Count(h.containerdLog(), "dropping an agent event"); n > 12 {
			t.Errorf("the shim logged %d dropped events one by one; the log must stay bounded", n)
		}
		t.Logf("ctr run --rm under the flood took %s", r.elapsed.Round(time.Millisecond))
	})

	t.Run("replies", func(t *testing.T) {
		// State names another task, a bundle and stdio that climb out to /etc and pid 1;
		// Pids lists 50000 processes, all pid 1 or made up.
		detachedUnder(t, "replies", func(h *harness, id string) {
			qemu := h.findQEMU(id)
			if info, ok := h.task(id); !ok || info.status != "RUNNING" || info.pid != qemu.pid {
				t.Errorf("task %s: %+v (listed %v), want RUNNING with the VMM's pid %d", id, info, ok, qemu.pid)
			}
			if _, ok := h.task("victim"); ok {
				t.Error("containerd lists the task a guest's State named")
			}
			if r := h.ctr("tasks", "ps", id); r.code != 0 {
				t.Errorf("tasks ps: %s", r)
			}
		})
	})

	t.Run("oversized", func(t *testing.T) {
		// The answer to Pids is a 5 MiB ttrpc frame: ttrpc's client discards it and fails
		// the call; the connection and the task live on.
		detachedUnder(t, "oversized", func(h *harness, id string) {
			if r := h.ctr("tasks", "ps", id); r.code == 0 || !strings.Contains(r.stderr, "exceed") {
				t.Errorf("tasks ps with an oversized answer: want a clear error: %s", r)
			}
		})
	})

	t.Run("silent", func(t *testing.T) {
		// After Start the guest answers nothing and sends nothing. The shim answers State
		// itself (stateAnswerTimeout, within containerd's 2 s), so ctr run -d, ls and kill
		// work; the SIGKILL the guest does not answer stops the VM (guestAnswerTimeout), the
		// task exits 255, and it deletes.
		h := hostileHarness(t, "silent")
		id := h.newID("hostile-silent")
		h.ctrOK(h.runArgs(detached(), id, "sleep", "600")...)
		if info, ok := h.task(id); !ok || info.status != "RUNNING" {
			t.Errorf("task of a silent guest: %+v (listed %v), want RUNNING", info, ok)
		}
		if r := h.ctr("tasks", "ps", id); r.code == 0 || !strings.Contains(r.stderr, "did not answer") {
			t.Errorf("tasks ps in a silent guest: want an error that says so: %s", r)
		}
		start := time.Now()
		h.ctrOK("tasks", "kill", "--signal", "SIGKILL", id)
		h.waitStatus(id, "STOPPED", 20*time.Second)
		t.Logf("STOPPED %s after SIGKILL to a silent guest", time.Since(start).Round(time.Millisecond))
		if code := h.deleteTask(id); code != 255 {
			t.Errorf("task of a VM stopped for not answering: exit code %d, want 255", code)
		}
		h.removeContainer(id)
	})

	t.Run("mute", func(t *testing.T) {
		// The agent takes the connection and answers nothing, from its first call at boot:
		// the run fails once guestAnswerTimeout has passed, saying so, and leaves nothing.
		h := hostileHarness(t, "mute")
		id := h.newID("hostile-mute")
		r := h.ctr(h.runArgs(h.rmFlags(), id, "echo", "hi")...)
		if r.code == 0 || !strings.Contains(r.stderr, "did not answer") {
			t.Errorf("ctr run in a guest that answers nothing: want an error that says so: %s", r)
		}
		t.Logf("ctr run failed after %s: %s", r.elapsed.Round(time.Millisecond), lastLine(r.stderr))
		h.ctr("containers", "delete", id)
	})

	t.Run("panic", func(t *testing.T) {
		// Start kills PID 1: the guest kernel panics, QEMU ends (-no-reboot).
		h := hostileHarness(t, "panic")
		id := h.newID("hostile-panic")
		r := h.ctr(h.runArgs(nil, id, "echo", "hi")...)
		if r.code == 0 || !strings.Contains(r.stderr, "VM") {
			t.Errorf("ctr run in a guest that panics at Start: want an error that names the VM: %s", r)
		}
		if info, ok := h.task(id); ok && info.status != "STOPPED" {
			t.Errorf("task after the guest's panic: %+v", info)
		}
		if !strings.Contains(h.containerdLog(), "Kernel panic") {
			t.Errorf("the shim's log does not quote the guest's panic")
		}
		h.forget(id)
	})

	t.Run("stdio", func(t *testing.T) {
		// The output never ends: zeros after the process's own. The exit is reported and
		// the output cut exitDrainTimeout after it, so that ctr, which reads the output to
		// its end, returns.
		h := hostileHarness(t, "stdio")
		peak := h.samplePeaks(50 * time.Millisecond)
		id := h.newID("hostile-stdio")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := h.d.ctrCommand(ctx, h.runArgs(h.rmFlags(), id, "echo", "hi")...)
		var out countingWriter
		cmd.Stdout = &out
		start := time.Now()
		err := cmd.Run()
		took := time.Since(start)
		peak.check(t)
		if err != nil {
			t.Errorf("ctr run with output that never ends: %v (after %s)", err, took)
		}
		if !strings.HasPrefix(string(out.head), "hi\n") {
			t.Errorf("output starts %q, want the process's own first", out.head)
		}
		t.Logf("ctr run --rm returned after %s and %.1f MiB of output", took.Round(time.Millisecond), float64(out.n.Load())/(1<<20))
	})

	t.Run("streams", func(t *testing.T) {
		// After Start the guest opens 4000 streams to the host, each naming a port nobody
		// listens on (streams that name none are TestMuxStreamFlood's).
		detachedUnder(t, "streams", func(*harness, string) { time.Sleep(2 * time.Second) })
	})

	t.Run("badframe", func(t *testing.T) {
		// After Start the guest writes a frame with a bad header: the transport is broken,
		// nothing can reach the task any more; the shim stops the VM and the task exits.
		h := hostileHarness(t, "badframe")
		id := h.newID("hostile-badframe")
		h.ctrOK(h.runArgs(detached(), id, "sleep", "600")...)
		h.waitStatus(id, "STOPPED", 20*time.Second)
		if code := h.deleteTask(id); code != 255 {
			t.Errorf("task whose guest broke the transport: exit code %d, want 255", code)
		}
		h.removeContainer(id)
		if !strings.Contains(h.containerdLog(), "the connection to the agent was lost") {
			t.Errorf("the shim's log does not say why it stopped the VM")
		}
	})

	nextTaskWorks(t)
}

// countingWriter counts what is written and keeps its first bytes.
type countingWriter struct {
	n    atomic.Int64
	head []byte
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if len(w.head) < 64 {
		w.head = append(w.head, b[:min(len(b), 64-len(w.head))]...)
	}
	w.n.Add(int64(len(b)))
	return len(b), nil
}

// TestShareSymlinkEscape: a container plants symlinks in its rw share that point at host files
// outside it (a secret, the host's /etc/shadow, the host's root), then reads and writes through
// them, and so does a second container given the same share. The guest resolves every link in
// its own file system (9p hands it the link, never the file behind it): no host file outside the
// share is read or written.
func TestShareSymlinkEscape(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	share, outside := t.TempDir(), t.TempDir()
	secret, target := filepath.Join(outside, "secret"), filepath.Join(outside, "target")
	if err := os.WriteFile(secret, []byte("host-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(target, []byte("untouched\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	shadow, _ := os.ReadFile("/etc/shadow")
	shadowLine, _, _ := strings.Cut(string(shadow), "\n")

	// to-inside shows that reading through a link works at all.
	plant := "echo inside-the-share > /data/inside; ln -s inside /data/to-inside; ln -s " + secret + " /data/to-secret; ln -s /etc/shadow /data/to-shadow; ln -s / /data/to-root; " +
		"ln -s " + target + " /data/to-target; ln -s " + outside + " /data/to-outside; "
	probe := "cat /data/to-inside /data/to-secret /data/to-shadow /data/to-root" + secret + " /data/to-outside/secret 2>&1; " +
		"echo pwned > /data/to-target; echo pwned > /data/to-outside/target; echo pwned > /data/to-root" + target + "; true"
	for i, script := range []string{plant + probe, probe} {
		id := h.newID("symlink-escape")
		r := h.ctr(h.runArgs(h.rmFlags(bindFlag(share, "/data", "rbind:rw")...), id, "sh", "-c", script)...)
		if r.code != 0 {
			t.Fatalf("container %d: %s", i+1, r)
		}
		if !strings.Contains(r.stdout, "inside-the-share") {
			t.Errorf("container %d could not read through a link inside its share:\n%s", i+1, r.stdout)
		}
		if strings.Contains(r.stdout, "host-secret") || (shadowLine != "" && strings.Contains(r.stdout, shadowLine)) {
			t.Errorf("container %d read a host file through a symlink in its share:\n%s", i+1, r.stdout)
		}
	}
	if b, _ := os.ReadFile(target); string(b) != "untouched\n" {
		t.Errorf("a host file outside the share was written through a symlink: %q", b)
	}
	if b, _ := os.ReadFile(secret); string(b) != "host-secret\n" {
		t.Errorf("the host's secret changed: %q", b)
	}
	// The links are in the share as the guest made them: links, not copies.
	if l, err := os.Readlink(filepath.Join(share, "to-secret")); err != nil || l != secret {
		t.Errorf("the share's to-secret: %q, %v", l, err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 2 {
		t.Errorf("files appeared next to the share's link targets: %v", ents)
	}
}
