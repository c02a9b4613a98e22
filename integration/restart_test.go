package integration

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// end sends containerd sig and waits for its exit.
func (d *daemon) end(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("containerd did not exit within 15s of %s", sig)
	}
}

// startAgain starts containerd on its configuration; a restarted one logs on
// in the same file, so that the log offsets of the harness stay valid. In
// its own process group, and gone with the test binary if that dies.
func (d *daemon) startAgain() error {
	select {
	case <-d.exited:
		var err error
		d.logf.Close()
		if d.logf, err = os.OpenFile(d.logPath, os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
			return err
		}
		d.exited = make(chan struct{})
	default: // the first start
	}
	d.cmd = exec.Command(d.bin.containerd, "--config", d.config)
	// The vz runtime's options for clients that pass none (nerdctl): the system-wide file.
	d.cmd.Env = append(os.Environ(), "PATH="+d.bin.path, "CONTAINERD_VZ_CONFIG="+d.vzConfig)
	d.cmd.Stdout = d.logf
	d.cmd.Stderr = d.logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	exited := d.exited
	if err := startHeld(d.cmd, func() {
		d.exitedAt = time.Now()
		close(exited)
	}); err != nil {
		return fmt.Errorf("restart containerd: %w", err)
	}
	return d.waitReady(30 * time.Second)
}

// TestContainerdRestart: tasks outlive a containerd restart and can then be
// exec'd into, killed and deleted; a task whose VM (for runc: whose init)
// died while containerd was down is reported stopped.
func TestContainerdRestart(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		a, b, gone := h.newID("restart-a"), h.newID("restart-b"), h.newID("restart-gone")
		for _, id := range []string{a, b, gone} {
			h.ctrOK(h.runArgs(detached(), id, trapSleep(143)...)...)
		}
		victim := h.taskPid(gone)
		if h.rt.vm {
			victim = h.findQEMU(gone).pid
		}

		h.d.end(t, syscall.SIGTERM)
		// While containerd is down, the third task's VM (or init) dies.
		if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: %v", victim, err)
		}
		if err := h.d.startAgain(); err != nil {
			t.Fatal(err)
		}

		for _, id := range []string{a, b} {
			if info, ok := h.task(id); !ok || info.status != "RUNNING" {
				t.Errorf("after the restart: task %s is %+v (found %v), want RUNNING", id, info, ok)
			}
			out := h.ctrOK("tasks", "exec", "--exec-id", "after-restart", id, "echo", "still-"+id)
			if strings.TrimSpace(out) != "still-"+id {
				t.Errorf("exec after the restart printed %q", out)
			}
		}
		// The task that died while containerd was down is not running
		// any more: containerd 2.4 reports it stopped or, having cleaned
		// it up on reconnecting, no longer lists it; the runc shim's task
		// gets the same treatment.
		deadline := time.Now().Add(10 * time.Second)
		for {
			info, ok := h.task(gone)
			if !ok || info.status == "STOPPED" {
				t.Logf("task whose %s died while containerd was down: %+v (listed: %v)", map[bool]string{true: "VM", false: "init"}[h.rt.vm], info, ok)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("task %s is %s 10s after the restart, although it died", gone, info.status)
			}
			time.Sleep(100 * time.Millisecond)
		}
		for _, id := range []string{a, b} {
			h.ctrOK("tasks", "kill", id)
			h.waitStatus(id, "STOPPED", 30*time.Second)
		}
		for _, id := range []string{a, b} {
			h.deleteTask(id)
		}
		if _, ok := h.task(gone); ok {
			h.deleteTask(gone)
		}
		for _, id := range []string{a, b, gone} {
			h.removeContainer(id)
		}
	})
}

// taskPid is the pid `ctr tasks ls` shows for a task.
func (h *harness) taskPid(id string) int {
	h.tb.Helper()
	info, ok := h.task(id)
	if !ok {
		h.tb.Fatalf("task %s not found", id)
	}
	return info.pid
}
