package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// trapSleep is a container command that runs until SIGTERM and then exits with code. A plain
// `sleep` would not do: PID 1 of a PID namespace ignores signals it has no handler for.
func trapSleep(code int) []string {
	return []string{"sh", "-c", fmt.Sprintf("trap 'exit %d' TERM; sleep 600 & wait", code)}
}

// detached are the ctr run flags of a background task without stdio.
func detached() []string { return []string{"-d", "--null-io"} }

// rmFlags are the ctr run flags of a foreground task removed when it exits, and extra.
func (h *harness) rmFlags(extra ...string) []string {
	return append(append([]string{"--rm"}, h.fifoFlag()...), extra...)
}

// TestRunEcho: output comes back, and the kernel is the host's for runc, the guest's for vz. For
// vz the shim logs its boot trace: every phase once, in order, each "at" no earlier than the one
// before (shim/boottrace.go), and the container sees every vCPU of its VM online. vz starts its
// VM from a template (warm_start, the default); vz-cold boots it.
func TestRunEcho(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) { runEcho(t, h, h.rt.vm) })
	t.Run("vz-cold", func(t *testing.T) {
		h := newHarness(t, runtimeCase{name: "vz-cold", runtime: vzRuntime, vm: true})
		h.vzConfig = runtimeConfigWith(t, h.d, "warm_start = false\n")
		runEcho(t, h, false)
	})
}

func runEcho(t *testing.T, h *harness, warm bool) {
	id := h.newID("echo")
	logStart := h.d.logSize()
	r := h.ctr(h.runArgs(h.rmFlags(), id, "sh", "-c", "echo hello; uname -r; cat /sys/devices/system/cpu/online")...)
	if r.code != 0 {
		t.Fatalf("unexpected exit status: %s", r)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || lines[0] != "hello" {
		t.Fatalf("want hello, a kernel release and the online CPUs: %s", r)
	}
	wantCPUs := "0-1" // the VM's default 2 vCPUs
	if !h.rt.vm {
		b, err := os.ReadFile("/sys/devices/system/cpu/online")
		if err != nil {
			t.Fatal(err)
		}
		wantCPUs = strings.TrimSpace(string(b))
	}
	if lines[2] != wantCPUs {
		t.Errorf("online CPUs %q, want %q", lines[2], wantCPUs)
	}
	kernel := strings.TrimSpace(lines[1])
	switch {
	case kernel == "":
		t.Fatalf("empty kernel release: %s", r)
	case h.rt.vm && kernel == suite.hostKernel:
		t.Errorf("container saw the host's kernel %s: not in a VM", kernel)
	case !h.rt.vm && kernel != suite.hostKernel:
		t.Errorf("container saw kernel %s, host has %s", kernel, suite.hostKernel)
	}
	t.Logf("kernel %s, ctr run --rm took %s", kernel, r.elapsed.Round(time.Millisecond))
	if h.rt.vm {
		checkBootTrace(t, h.d.logSince(logStart), id, warm)
	}
}

// checkBootTrace checks the boot trace the shim logged for task id.
// A VM restored from a template (warm) has no boot of its own to trace: the template's guest
// booted before the task.
func checkBootTrace(t *testing.T, log, id string, warm bool) {
	t.Helper()
	want := []string{"prepared", "vmm started", "kernel entered", "init running", "modules loaded",
		"agent serving", "agent connected", "guest set up", "rootfs mounted", "container created", "container started",
		"first output", "exited", "vm gone"}
	if warm {
		want = []string{"prepared", "template ready", "vmm started", "agent connected", "guest set up",
			"rootfs mounted", "container created", "container started", "first output", "exited", "vm gone"}
	}
	var lines []string
	for _, l := range strings.Split(log, "\n") {
		if bootTraceRE.MatchString(l) && strings.Contains(l, "id="+id+" ") {
			lines = append(lines, l)
		}
	}
	tr := parseBootTraces(strings.Join(lines, "\n"))
	// "guest network" comes only with a network the guest configures from the command line.
	got := slices.DeleteFunc(slices.Clone(tr.phases), func(p string) bool { return p == "guest network" })
	if !slices.Equal(got, want) || tr.runs != 1 {
		t.Fatalf("boot trace phases %q (in %d runs), want %q:\n%s", tr.phases, tr.runs, want, strings.Join(lines, "\n"))
	}
	var last time.Duration
	for _, p := range tr.phases {
		if tr.at[p] < last {
			t.Errorf("phase %q ends at %s, before the phase before it (%s):\n%s", p, tr.at[p], last, strings.Join(lines, "\n"))
		}
		last = tr.at[p]
	}
	t.Logf("boot trace:\n%s", tr.table())
}

// TestRunExitCode: the task's exit code is ctr run's.
func TestRunExitCode(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		id := h.newID("exit")
		r := h.ctr(h.runArgs(h.rmFlags(), id, "sh", "-c", "echo out; echo err >&2; exit 3")...)
		if r.code != 3 {
			t.Fatalf("want exit status 3: %s", r)
		}
		if r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") {
			t.Errorf("want out on stdout and err on stderr: %s", r)
		}
	})
}

// TestKillDetached: a detached task stops on `ctr tasks kill` (SIGTERM) and reports its exit code.
func TestKillDetached(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		id := h.newID("kill")
		h.ctrOK(h.runArgs(detached(), id, trapSleep(143)...)...)
		if info, ok := h.task(id); !ok || info.status != "RUNNING" {
			t.Fatalf("after ctr run -d: task %+v (found %v), want RUNNING", info, ok)
		}
		// The trap is set once sh has started its child.
		h.waitProcs(id, 2, 30*time.Second)
		h.ctrOK("tasks", "kill", id)
		took := h.waitStatus(id, "STOPPED", 30*time.Second)
		if code := h.deleteTask(id); code != 143 {
			t.Errorf("exit code %d, want 143", code)
		}
		h.removeContainer(id)
		t.Logf("STOPPED %s after SIGTERM", took.Round(time.Millisecond))
	})
}

// TestExecStdin: an exec'd process reads the caller's stdin to its end and exits with its code.
func TestExecStdin(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		id := h.newID("exec")
		h.ctrOK(h.runArgs(detached(), id, "sleep", "600")...)

		var input bytes.Buffer
		for i := 0; input.Len() < 64<<10; i++ {
			fmt.Fprintf(&input, "line %05d: the quick brown fox jumps over the lazy dog\n", i)
		}
		exec := func(execID string, command ...string) []string {
			args := append([]string{"tasks", "exec", "--exec-id", execID}, h.fifoFlag()...)
			return append(append(args, id), command...)
		}
		r := h.ctrStdin(bytes.NewReader(input.Bytes()), exec("e1", "sh", "-c", "cat")...)
		if r.code != 0 {
			t.Fatalf("exec cat: %s", r)
		}
		if r.stdout != input.String() {
			t.Errorf("exec cat: got %d bytes back, want the %d bytes of stdin (first line %q)",
				len(r.stdout), input.Len(), strings.SplitN(r.stdout, "\n", 2)[0])
		}
		// Fast-exiting: everything it wrote must arrive.
		r = h.ctr(exec("e2", "sh", "-c", "head -c 100000 /bin/busybox | wc -c; exit 5")...)
		if r.code != 5 || strings.TrimSpace(r.stdout) != "100000" {
			t.Errorf("want 100000 and exit status 5: %s", r)
		}
		h.killAndRemove(id)
	})
}

// TestRunTTY: with -t the container gets a terminal of the size of ctr's.
func TestRunTTY(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		id := h.newID("tty")
		// ctr sets the size just after the task starts: wait for it in the container (while the
		// size is 0x0, busybox's stty size prints an error instead, and may still exit 0).
		script := `i=0; until [ -n "$(stty size 2>/dev/null | grep '^[1-9]')" ] || [ $i -ge 100 ]; do ` +
			`sleep 0.1; i=$((i+1)); done; stty size; echo tty-ok`
		r, err := h.ctrTTY(40, 120, h.runArgs(h.rmFlags("-t"), id, "sh", "-c", script)...)
		if err != nil {
			t.Fatalf("%v\n%s", err, r)
		}
		if r.code != 0 || !strings.Contains(r.stdout, "tty-ok") {
			t.Fatalf("want tty-ok: %s", r)
		}
		if !strings.Contains(r.stdout, "40 120\n") {
			t.Errorf("want terminal size 40 120 (output %q): %s", r.stdout, r)
		}
	})
}

// TestPsMetricsPause: ps lists the init process, metrics have memory figures, pause and resume
// change the status and the task still works after them.
func TestPsMetricsPause(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		id := h.newID("ps")
		h.ctrOK(h.runArgs(detached(), id, "sleep", "600")...)
		info, ok := h.task(id)
		if !ok || info.status != "RUNNING" || info.pid <= 0 {
			t.Fatalf("after ctr run -d: task %+v (found %v), want RUNNING with a pid", info, ok)
		}

		if pids := h.pids(id); !slices.Contains(pids, info.pid) {
			t.Errorf("tasks ps %s: pids %v lack the init pid %d", id, pids, info.pid)
		}

		metrics := h.ctrOK("tasks", "metrics", id)
		// cgroup v1 (this host's runc) or v2 (the guest's): ctr prints different names.
		usage, ok := metricValue(metrics, "memory.usage_in_bytes")
		if !ok {
			usage, ok = metricValue(metrics, "memory.usage")
		}
		if !ok || usage == 0 {
			t.Errorf("tasks metrics: no memory usage figure:\n%s", metrics)
		}

		h.ctrOK("tasks", "pause", id)
		h.waitStatus(id, "PAUSED", 10*time.Second)
		h.ctrOK("tasks", "resume", id)
		h.waitStatus(id, "RUNNING", 10*time.Second)
		args := append([]string{"tasks", "exec", "--exec-id", "alive"}, h.fifoFlag()...)
		if out := h.ctrOK(append(args, id, "echo", "alive")...); out != "alive\n" {
			t.Errorf("exec after resume: %q, want alive", out)
		}
		h.killAndRemove(id)
	})
}

// TestBackingProcessKilled: when what runs the task dies behind containerd's back (the
// container's init for runc, the VM for vz), the task is STOPPED at once and deletes cleanly.
func TestBackingProcessKilled(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		id := h.newID("killvm")
		h.ctrOK(h.runArgs(detached(), id, "sleep", "600")...)
		info, ok := h.task(id)
		if !ok || info.status != "RUNNING" {
			t.Fatalf("after ctr run -d: task %+v (found %v), want RUNNING", info, ok)
		}
		victim := info.pid
		if h.rt.vm {
			victim = h.findQEMU(id).pid
		}
		if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: %v", victim, err)
		}
		took := h.waitStatus(id, "STOPPED", 2*time.Second)
		r := h.ctr("tasks", "delete", id)
		if r.code != 0 {
			t.Fatalf("delete task: %s", r)
		}
		h.removeContainer(id)
		t.Logf("killed pid %d: STOPPED after %s; delete said: %s", victim, took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
	})
}

// waitProcs polls `ctr tasks ps` until task id has at least n processes.
func (h *harness) waitProcs(id string, n int, timeout time.Duration) {
	h.tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		pids := h.pids(id)
		if len(pids) >= n {
			return
		}
		if time.Now().After(deadline) {
			h.tb.Fatalf("task %s: processes %v after %s, want %d", id, pids, timeout, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pids returns the pids `ctr tasks ps` lists for task id.
func (h *harness) pids(id string) []int {
	h.tb.Helper()
	out := h.ctrOK("tasks", "ps", id)
	var pids []int
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "PID" {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil {
			h.tb.Fatalf("tasks ps: bad line %q in:\n%s", line, out)
		}
		pids = append(pids, pid)
	}
	return pids
}

// findQEMU returns the QEMU process that runs task id, among the processes of this containerd
// (ownedProcs, never another test's): the one that names the task's bundle directory or descends
// from a process working in it (the shim), else the only QEMU there is (tests run one at a time).
func (h *harness) findQEMU(id string) proc {
	h.tb.Helper()
	bundle := filepath.Join(h.d.state, "io.containerd.runtime.v2.task", h.d.namespace, id)
	inBundle := func(p proc) bool {
		return p.cwd == bundle || strings.HasPrefix(p.cwd, bundle+"/") ||
			strings.Contains(p.cmdline+" ", bundle+"/") || strings.Contains(p.cmdline+" ", bundle+" ") ||
			strings.Contains(p.cmdline+" ", " -id "+id+" ")
	}
	byPID := map[int]proc{}
	for _, p := range listProcs() {
		byPID[p.pid] = p
	}
	var matches, qemus []proc
	for _, p := range h.d.ownedProcs() {
		if !p.isQEMU() {
			continue
		}
		qemus = append(qemus, p)
		for a, ok := p, true; ok && a.pid > 1; a, ok = byPID[a.ppid] {
			if inBundle(a) {
				matches = append(matches, p)
				break
			}
		}
	}
	switch {
	case len(matches) == 1:
		return matches[0]
	case len(matches) == 0 && len(qemus) == 1:
		h.tb.Logf("QEMU %d does not name bundle %s; taking it as the only QEMU of this containerd", qemus[0].pid, bundle)
		return qemus[0]
	}
	h.tb.Fatalf("cannot tell the QEMU of task %s: matching the bundle %v, of this containerd %v", id, matches, qemus)
	return proc{}
}

// metricValue finds "name<TAB>value" in `ctr tasks metrics` output.
func metricValue(out, name string) (uint64, bool) {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == name {
			v, err := strconv.ParseUint(f[1], 10, 64)
			return v, err == nil
		}
	}
	return 0, false
}
