package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

func TestLifecycleExitCodes(t *testing.T) {
	a := startAgent(t)
	for _, tc := range []struct {
		name string
		args []string
		want uint32
	}{
		{"exit0", []string{"sh", "-c", "echo out; echo err >&2; exit 0"}, 0},
		{"exit1", []string{"false"}, 1},
		{"sigkill", []string{"sleep", "60"}, 137},
		{"exit255", []string{"sh", "-c", "exit 255"}, 255},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.t = t
			id := "life-" + tc.name
			if tc.name == "sigkill" {
				// The container's init ignores a SIGKILL sent from inside
				// its own pid namespace, so it comes from the API.
				a.create(id, spec(id, tc.args), ioOpts{})
				a.start(id, "")
				a.kill(id, "", unix.SIGKILL, false)
				if code := a.wait(id, ""); code != tc.want {
					t.Errorf("exit status %d, want %d", code, tc.want)
				}
				a.remove(id)
				return
			}
			code, stdout, stderr := a.run(id, spec(id, tc.args))
			if code != tc.want {
				t.Errorf("exit status %d, want %d (stdout %q, stderr %q)", code, tc.want, stdout, stderr)
			}
			if tc.name == "exit0" && (stdout != "out\n" || stderr != "err\n") {
				t.Errorf("stdout %q, stderr %q; want \"out\\n\", \"err\\n\"", stdout, stderr)
			}
		})
	}
}

func TestStateTransitions(t *testing.T) {
	a := startAgent(t)
	id := "state"
	a.create(id, spec(id, []string{"sh", "-c", "read x; exit 7"}), ioOpts{stdin: true, stdout: true})
	st := a.state(id, "")
	if st.Status != task.Status_CREATED || st.Pid == 0 {
		t.Fatalf("after create: %v pid %d", st.Status, st.Pid)
	}
	if _, err := a.tasks.Delete(ctxNS(), &taskAPI.DeleteRequest{ID: id, ExecID: "nope"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("delete of unknown exec: %v, want not found", err)
	}
	pid := a.start(id, "")
	if pid != st.Pid {
		t.Errorf("start pid %d, create pid %d", pid, st.Pid)
	}
	if st := a.state(id, ""); st.Status != task.Status_RUNNING {
		t.Fatalf("after start: %v", st.Status)
	}
	_, err := a.tasks.Start(ctxNS(), &taskAPI.StartRequest{ID: id})
	if !errdefs.IsFailedPrecondition(errgrpc.ToNative(err)) {
		t.Errorf("second start: %v, want failed precondition", err)
	}
	_, err = a.tasks.Delete(ctxNS(), &taskAPI.DeleteRequest{ID: id})
	if !errdefs.IsFailedPrecondition(errgrpc.ToNative(err)) {
		t.Errorf("delete of running task: %v, want failed precondition", err)
	}
	c, err := a.tasks.Connect(ctxNS(), &taskAPI.ConnectRequest{ID: id})
	if err != nil || c.TaskPid != pid || c.ShimPid != uint32(a.cmd.Process.Pid) {
		t.Errorf("connect: %+v %v", c, err)
	}
	a.closeStdin(id, "")
	if code := a.wait(id, ""); code != 7 {
		t.Errorf("exit %d, want 7", code)
	}
	st = a.state(id, "")
	if st.Status != task.Status_STOPPED || st.ExitStatus != 7 || st.ExitedAt == nil {
		t.Errorf("after exit: %v %d %v", st.Status, st.ExitStatus, st.ExitedAt)
	}
	_, err = a.tasks.Kill(ctxNS(), &taskAPI.KillRequest{ID: id, Signal: 9})
	if !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("kill after exit: %v, want not found", err)
	}
	a.remove(id)
	if _, err := a.tasks.State(ctxNS(), &taskAPI.StateRequest{ID: id}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("state after delete: %v, want not found", err)
	}
}

func TestDeleteCreated(t *testing.T) {
	a := startAgent(t)
	id := "created"
	pio := a.create(id, spec(id, []string{"echo", "never"}), ioOpts{stdout: true})
	resp, err := a.tasks.Delete(ctxNS(), &taskAPI.DeleteRequest{ID: id})
	if err != nil {
		t.Fatal(errgrpc.ToNative(err))
	}
	if resp.ExitStatus != 137 {
		t.Errorf("deleted created task exit %d, want 137", resp.ExitStatus)
	}
	if out := pio.stdout.wait(t); out != "" {
		t.Errorf("a never-started task printed %q", out)
	}
	if _, err := a.bundles.Remove(ctxNS(), &agentapi.RemoveBundleRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentExecs(t *testing.T) {
	a := startAgent(t)
	id := "execs"
	a.create(id, spec(id, []string{"sleep", "60"}), ioOpts{})
	a.start(id, "")
	const n = 8
	var wg sync.WaitGroup
	type result struct {
		code           uint32
		stdout, stderr string
	}
	results := make([]result, n)
	pios := make([]*procIO, n)
	for i := 0; i < n; i++ {
		// Each exec echoes its stdin to stdout with a prefix, writes its
		// own line to stderr and exits with its own code.
		script := fmt.Sprintf("while read l; do echo out%d:$l; done; echo err%d >&2; exit %d", i, i, 10+i)
		pios[i] = a.exec(id, fmt.Sprintf("e%d", i), []string{"sh", "-c", script}, ioOpts{stdin: true, stdout: true, stderr: true})
	}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			fmt.Fprintf(pios[i].stdin, "a%d\nb%d\n", i, i)
			pios[i].stdin.CloseWrite()
		}(i)
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		results[i].code = a.wait(id, fmt.Sprintf("e%d", i))
		results[i].stdout = pios[i].stdout.wait(t)
		results[i].stderr = pios[i].stderr.wait(t)
	}
	resp, err := a.tasks.Pids(ctxNS(), &taskAPI.PidsRequest{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Processes) != 1 {
		t.Errorf("pids after the execs ended: %d processes, want 1", len(resp.Processes))
	}
	for i, r := range results {
		if r.code != uint32(10+i) {
			t.Errorf("exec %d exit %d, want %d", i, r.code, 10+i)
		}
		if want := fmt.Sprintf("out%d:a%d\nout%d:b%d\n", i, i, i, i); r.stdout != want {
			t.Errorf("exec %d stdout %q, want %q", i, r.stdout, want)
		}
		if want := fmt.Sprintf("err%d\n", i); r.stderr != want {
			t.Errorf("exec %d stderr %q, want %q", i, r.stderr, want)
		}
		st := a.state(id, fmt.Sprintf("e%d", i))
		if st.Status != task.Status_STOPPED || st.ExitStatus != uint32(10+i) {
			t.Errorf("exec %d state %v %d", i, st.Status, st.ExitStatus)
		}
		if _, err := a.tasks.Delete(ctxNS(), &taskAPI.DeleteRequest{ID: id, ExecID: fmt.Sprintf("e%d", i)}); err != nil {
			t.Errorf("delete exec %d: %v", i, err)
		}
	}
	a.kill(id, "", unix.SIGKILL, false)
	a.wait(id, "")
	a.remove(id)
}

func TestTerminal(t *testing.T) {
	a := startAgent(t)
	id := "tty"
	// The first line waits for our resize; stty reads the terminal's size.
	pio := a.create(id, spec(id, []string{"sh", "-c", "read x; stty size; echo tty-ok"}, withTerminal), ioOpts{stdin: true, stdout: true, terminal: true})
	a.start(id, "")
	if _, err := a.tasks.ResizePty(ctxNS(), &taskAPI.ResizePtyRequest{ID: id, Width: 123, Height: 45}); err != nil {
		t.Fatal(errgrpc.ToNative(err))
	}
	io.WriteString(pio.stdin, "go\r")
	if code := a.wait(id, ""); code != 0 {
		t.Errorf("exit %d", code)
	}
	out := pio.stdout.wait(t)
	if !strings.Contains(out, "45 123") || !strings.Contains(out, "tty-ok") {
		t.Errorf("terminal output %q lacks the size \"45 123\" or tty-ok", out)
	}
	if !strings.Contains(out, "\r\n") {
		t.Errorf("terminal output %q has no CRLF: not a tty?", out)
	}
	a.remove(id)

	// An exec with its own terminal.
	id = "tty-exec"
	a.create(id, spec(id, []string{"sleep", "60"}), ioOpts{})
	a.start(id, "")
	epio := a.exec(id, "t", []string{"sh", "-c", "read x; stty size"}, ioOpts{stdin: true, stdout: true, terminal: true})
	if _, err := a.tasks.ResizePty(ctxNS(), &taskAPI.ResizePtyRequest{ID: id, ExecID: "t", Width: 80, Height: 24}); err != nil {
		t.Fatal(errgrpc.ToNative(err))
	}
	io.WriteString(epio.stdin, "go\r")
	a.wait(id, "t")
	if out := epio.stdout.wait(t); !strings.Contains(out, "24 80") {
		t.Errorf("exec terminal output %q lacks \"24 80\"", out)
	}
	a.kill(id, "", unix.SIGKILL, false)
	a.wait(id, "")
	a.remove(id)
}

func TestStdinPayloadByteExact(t *testing.T) {
	a := startAgent(t)
	id := "payload"
	pio := a.create(id, spec(id, []string{"sh", "-c", "cat; echo done >&2"}), ioOpts{stdin: true, stdout: true, stderr: true})
	a.start(id, "")
	payload := make([]byte, 20<<20)
	rand.Read(payload)
	go func() {
		pio.stdin.Write(payload)
		pio.stdin.CloseWrite()
	}()
	if code := a.wait(id, ""); code != 0 {
		t.Errorf("exit %d", code)
	}
	out := pio.stdout.wait(t)
	if len(out) != len(payload) || sha256.Sum256([]byte(out)) != sha256.Sum256(payload) {
		t.Errorf("stdout: %d bytes, want the %d bytes sent", len(out), len(payload))
	}
	if errOut := pio.stderr.wait(t); errOut != "done\n" {
		t.Errorf("stderr %q, want only \"done\\n\"", errOut)
	}
	a.remove(id)
}

func TestFastExitLosesNoOutput(t *testing.T) {
	a := startAgent(t)
	id := "fast"
	a.create(id, spec(id, []string{"sleep", "120"}), ioOpts{})
	a.start(id, "")
	for i := 0; i < 100; i++ {
		execID := fmt.Sprintf("f%d", i)
		pio := a.exec(id, execID, []string{"echo", "line-" + execID}, ioOpts{stdout: true})
		a.wait(id, execID)
		// Wait returned, so the output must already have reached us.
		select {
		case <-pio.stdout.done:
		case <-time.After(5 * time.Second):
			t.Fatalf("exec %d: stdout still open after Wait returned", i)
		}
		if got := pio.stdout.buf.String(); got != "line-"+execID+"\n" {
			t.Fatalf("exec %d printed %q", i, got)
		}
		if _, err := a.tasks.Delete(ctxNS(), &taskAPI.DeleteRequest{ID: id, ExecID: execID}); err != nil {
			t.Fatal(err)
		}
	}
	a.kill(id, "", unix.SIGKILL, false)
	a.wait(id, "")
	a.remove(id)

	// The same for a whole container, init included.
	for i := 0; i < 10; i++ {
		cid := fmt.Sprintf("fast-init-%d", i)
		code, out, _ := a.run(cid, spec(cid, []string{"echo", cid}))
		if code != 0 || out != cid+"\n" {
			t.Fatalf("container %d: exit %d, output %q", i, code, out)
		}
	}
}

func TestSignals(t *testing.T) {
	a := startAgent(t)
	id := "signals"
	// SIGTERM is trapped: the handler's exit status shows it ran.
	pio := a.create(id, spec(id, []string{"sh", "-c", "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.1; done"}), ioOpts{stdout: true})
	a.start(id, "")
	waitForOutput(t, pio.stdout, "ready")
	a.kill(id, "", unix.SIGTERM, false)
	if code := a.wait(id, ""); code != 42 {
		t.Errorf("after SIGTERM exit %d, want 42 from the trap", code)
	}
	if out := pio.stdout.wait(t); !strings.Contains(out, "got-term") {
		t.Errorf("output %q lacks got-term", out)
	}
	a.remove(id)

	// Kill(all) reaches exec'd processes too. With a host pid namespace
	// the kernel does not kill the execs with init, so only --all can.
	id = "killall"
	a.create(id, spec(id, []string{"sleep", "60"}, withHostPidNS), ioOpts{})
	a.start(id, "")
	a.exec(id, "x1", []string{"sleep", "61"}, ioOpts{})
	a.exec(id, "x2", []string{"sleep", "62"}, ioOpts{})
	a.kill(id, "", unix.SIGKILL, true)
	for _, e := range []string{"x1", "x2", ""} {
		if code := a.wait(id, e); code != 137 {
			t.Errorf("process %q exit %d after kill --all, want 137", e, code)
		}
	}
	a.remove(id)

	// Kill of an exec signals that exec alone.
	id = "killexec"
	a.create(id, spec(id, []string{"sleep", "60"}), ioOpts{})
	a.start(id, "")
	a.exec(id, "x", []string{"sleep", "61"}, ioOpts{})
	a.kill(id, "x", unix.SIGKILL, false)
	if code := a.wait(id, "x"); code != 137 {
		t.Errorf("exec exit %d, want 137", code)
	}
	if st := a.state(id, ""); st.Status != task.Status_RUNNING {
		t.Errorf("init is %v after its exec was killed", st.Status)
	}
	a.kill(id, "", unix.SIGKILL, false)
	a.wait(id, "")
	a.remove(id)
}

func TestPauseResumePidsStats(t *testing.T) {
	a := startAgent(t)
	id := "pause"
	// Burn some CPU and hold some memory so that stats have figures.
	pio := a.create(id, spec(id, []string{"sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo busy-done; x=$(yes | head -c 4000000 | wc -c); echo $x; read y"}), ioOpts{stdin: true, stdout: true})
	a.start(id, "")
	waitForOutput(t, pio.stdout, "4000000")

	pids, err := a.tasks.Pids(ctxNS(), &taskAPI.PidsRequest{ID: id})
	if err != nil || len(pids.Processes) != 1 || pids.Processes[0].Pid != a.state(id, "").Pid {
		t.Errorf("pids: %v %v", pids, err)
	}
	a.exec(id, "bg", []string{"sleep", "60"}, ioOpts{})
	pids, err = a.tasks.Pids(ctxNS(), &taskAPI.PidsRequest{ID: id})
	if err != nil || len(pids.Processes) != 2 {
		t.Fatalf("pids with an exec: %v %v", pids, err)
	}
	var sawExec bool
	for _, p := range pids.Processes {
		if p.Info != nil {
			v, err := typeurl.UnmarshalAny(p.Info)
			if d, ok := v.(*options.ProcessDetails); err == nil && ok && d.ExecID == "bg" {
				sawExec = true
			}
		}
	}
	if !sawExec {
		t.Errorf("pids do not name the exec: %v", pids.Processes)
	}

	resp, err := a.tasks.Stats(ctxNS(), &taskAPI.StatsRequest{ID: id})
	if err != nil {
		t.Fatal(errgrpc.ToNative(err))
	}
	v, err := typeurl.UnmarshalAny(resp.Stats)
	if err != nil {
		t.Fatal(err)
	}
	var mem, cpu uint64
	switch m := v.(type) {
	case *v1.Metrics:
		mem, cpu = m.GetMemory().GetUsage().GetUsage(), m.GetCPU().GetUsage().GetTotal()
	case *v2.Metrics:
		mem, cpu = m.GetMemory().GetUsage(), m.GetCPU().GetUsageUsec()
	default:
		t.Fatalf("stats of type %T", v)
	}
	if mem == 0 || cpu == 0 {
		t.Errorf("stats %T: memory %d, cpu %d; want both non-zero", v, mem, cpu)
	}

	if _, err := a.tasks.Pause(ctxNS(), &taskAPI.PauseRequest{ID: id}); err != nil {
		t.Fatal(errgrpc.ToNative(err))
	}
	if st := a.state(id, ""); st.Status != task.Status_PAUSED {
		t.Errorf("after pause: %v", st.Status)
	}
	if s := cgroupFreezerState(t, a, id); s != "" && s != "FROZEN" {
		t.Errorf("freezer state %q after pause", s)
	}
	if _, err := a.tasks.Resume(ctxNS(), &taskAPI.ResumeRequest{ID: id}); err != nil {
		t.Fatal(errgrpc.ToNative(err))
	}
	if st := a.state(id, ""); st.Status != task.Status_RUNNING {
		t.Errorf("after resume: %v", st.Status)
	}
	// It runs again: it answers on stdin.
	io.WriteString(pio.stdin, "bye\n")
	if code := a.wait(id, ""); code != 0 {
		t.Errorf("exit %d", code)
	}
	a.remove(id)
}

// cgroupFreezerState reads the container's freezer (cgroup v1 hosts).
func cgroupFreezerState(t *testing.T, a *testAgent, id string) string {
	b, err := readFile("/sys/fs/cgroup/freezer/vz-agent-test/" + id + "/freezer.state")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(b)
}

func TestManyContainersLeaveNothing(t *testing.T) {
	a := startAgent(t)
	// A first container warms up what the agent keeps for good (the OOM
	// watcher, runc's root, pools), so that the count below is fair.
	a.run("warmup", spec("warmup", []string{"true"}))
	before := a.resources()

	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 10)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			id := fmt.Sprintf("many-%d", i)
			if err := a.runConcurrent(id, spec(id, []string{"sh", "-c", fmt.Sprintf("echo hi-%d; sleep 1", i)}), fmt.Sprintf("hi-%d\n", i)); err != nil {
				errs <- fmt.Errorf("%s: %w", id, err)
			}
		}(i)
	}
	// While they all run, the agent holds them all.
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Exit events and stream closes happen just after Wait; give the
	// agent's goroutines a moment before counting.
	var after resources
	for i := 0; i < 50; i++ {
		after = a.resources()
		if after.same(before) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !after.same(before) {
		t.Errorf("after %d containers: %+v, before: %+v", n, after, before)
	}
	t.Logf("agent resources before and after %d containers: %+v", n, after)
}

// runConcurrent is run() for many goroutines: errors instead of t.Fatal.
func (a *testAgent) runConcurrent(id string, s *specs.Spec, wantOut string) error {
	bundle, err := a.bundleErr(id, s)
	if err != nil {
		return err
	}
	outID, out, err := a.streamErr()
	if err != nil {
		return err
	}
	defer out.Close()
	got := capture(out)
	if _, err := a.tasks.Create(ctxNS(), &taskAPI.CreateTaskRequest{ID: id, Bundle: bundle, Rootfs: rootfsMounts(), Stdout: outID}); err != nil {
		return fmt.Errorf("create: %w", errgrpc.ToNative(err))
	}
	if _, err := a.tasks.Start(ctxNS(), &taskAPI.StartRequest{ID: id}); err != nil {
		return fmt.Errorf("start: %w", errgrpc.ToNative(err))
	}
	w, err := a.tasks.Wait(ctxNS(), &taskAPI.WaitRequest{ID: id})
	if err != nil {
		return fmt.Errorf("wait: %w", errgrpc.ToNative(err))
	}
	<-got.done
	if w.ExitStatus != 0 || got.buf.String() != wantOut {
		return fmt.Errorf("exit %d, output %q", w.ExitStatus, got.buf.String())
	}
	if _, err := a.tasks.Delete(ctxNS(), &taskAPI.DeleteRequest{ID: id}); err != nil {
		return fmt.Errorf("delete: %w", errgrpc.ToNative(err))
	}
	if _, err := a.bundles.Remove(ctxNS(), &agentapi.RemoveBundleRequest{Id: id}); err != nil {
		return fmt.Errorf("remove bundle: %w", errgrpc.ToNative(err))
	}
	return nil
}

func TestBadInput(t *testing.T) {
	a := startAgent(t)
	ctx := ctxNS()
	check := func(what string, err error, is func(error) bool, class string) {
		t.Helper()
		err = errgrpc.ToNative(err)
		if err == nil || !is(err) {
			t.Errorf("%s: got %v, want %s", what, err, class)
		} else {
			t.Logf("%s: %v", what, err)
		}
	}

	b := a.bundleRaw("malformed", []byte(`{"ociVersion": "1.0.2", "process": {`))
	_, err := a.tasks.Create(ctx, &taskAPI.CreateTaskRequest{ID: "malformed", Bundle: b, Rootfs: rootfsMounts()})
	check("malformed config.json", err, errdefs.IsInvalidArgument, "invalid argument")

	b = a.bundle("norootfs", spec("norootfs", []string{"true"}))
	_, err = a.tasks.Create(ctx, &taskAPI.CreateTaskRequest{ID: "norootfs", Bundle: b})
	check("no rootfs", err, errdefs.IsNotFound, "not found")
	_, err = a.tasks.Create(ctx, &taskAPI.CreateTaskRequest{ID: "norootfs", Bundle: b,
		Rootfs: []*types.Mount{{Type: "bind", Source: "/nonexistent/rootfs", Options: []string{"rbind"}}}})
	check("missing rootfs source", err, errdefs.IsNotFound, "not found")

	_, err = a.tasks.Create(ctx, &taskAPI.CreateTaskRequest{ID: "../escape", Bundle: b})
	check("bad id", err, errdefs.IsInvalidArgument, "invalid argument")

	_, err = a.bundles.Create(ctx, &agentapi.CreateBundleRequest{Id: "escape", Files: []*agentapi.BundleFile{{Path: "../../x", Data: []byte("x")}}})
	check("bundle file outside the bundle", err, errdefs.IsInvalidArgument, "invalid argument")

	a.create("dup", spec("dup", []string{"sleep", "60"}), ioOpts{})
	_, err = a.tasks.Create(ctx, &taskAPI.CreateTaskRequest{ID: "dup", Bundle: b, Rootfs: rootfsMounts()})
	check("duplicate id", err, errdefs.IsAlreadyExists, "already exists")

	_, err = a.tasks.Create(ctx, &taskAPI.CreateTaskRequest{ID: "nostream", Bundle: b, Rootfs: rootfsMounts(), Stdout: "never-opened"})
	check("unknown stdio stream", err, errdefs.IsNotFound, "not found")

	p, _ := typeurl.MarshalAnyToProto(spec("x", []string{"true"}).Process)
	_, err = a.tasks.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "unknown", ExecID: "e", Spec: p})
	check("exec into an unknown container", err, errdefs.IsNotFound, "not found")

	_, err = a.tasks.Wait(ctx, &taskAPI.WaitRequest{ID: "dup", ExecID: "unknown"})
	check("wait on an unknown exec", err, errdefs.IsNotFound, "not found")

	_, err = a.tasks.Wait(ctx, &taskAPI.WaitRequest{ID: "unknown"})
	check("wait on an unknown container", err, errdefs.IsNotFound, "not found")

	_, err = a.tasks.Checkpoint(ctx, &taskAPI.CheckpointTaskRequest{ID: "dup"})
	check("checkpoint", err, errdefs.IsNotImplemented, "not implemented")

	_, err = a.bundles.Remove(ctx, &agentapi.RemoveBundleRequest{Id: "dup"})
	check("remove the bundle of a live container", err, errdefs.IsFailedPrecondition, "failed precondition")

	_, err = a.system.Setup(ctx, &agentapi.SetupRequest{Hostname: "not-the-host"})
	check("setup in host mode", err, errdefs.IsFailedPrecondition, "failed precondition")

	// runc itself refuses: the error says why.
	bad := spec("badargs", []string{"/no/such/binary"})
	b = a.bundle("badargs", bad)
	_, err = a.tasks.Create(ctx, &taskAPI.CreateTaskRequest{ID: "badargs", Bundle: b, Rootfs: rootfsMounts()})
	if err == nil {
		a.start("badargs", "")
		t.Errorf("a missing binary was started")
	} else if !strings.Contains(err.Error(), "no such file") {
		t.Errorf("runc's error does not name the cause: %v", err)
	}

	// After all that, the agent still serves.
	a.start("dup", "")
	a.kill("dup", "", unix.SIGKILL, false)
	a.wait("dup", "")
	a.remove("dup")
	if code, out, _ := a.run("still-ok", spec("still-ok", []string{"echo", "ok"})); code != 0 || out != "ok\n" {
		t.Errorf("after bad input: exit %d, %q", code, out)
	}
	info, err := a.system.Info(ctx, &agentapi.InfoRequest{})
	if err != nil || info.Init || info.KernelRelease == "" {
		t.Errorf("info: %v %v", info, err)
	}
}

func TestEvents(t *testing.T) {
	a := startAgent(t)
	id := "events"
	a.create(id, spec(id, []string{"sleep", "60"}), ioOpts{})
	a.start(id, "")
	a.exec(id, "e", []string{"true"}, ioOpts{})
	a.wait(id, "e")
	a.tasks.Pause(ctxNS(), &taskAPI.PauseRequest{ID: id})
	a.tasks.Resume(ctxNS(), &taskAPI.ResumeRequest{ID: id})
	a.kill(id, "", unix.SIGKILL, false)
	a.wait(id, "")
	a.remove(id)

	// The events were queued while nobody listened; a late subscriber
	// gets them all, in order.
	ctx, cancel := context.WithTimeout(ctxNS(), 10*time.Second)
	defer cancel()
	st, err := a.events.Stream(ctx, &agentapi.StreamEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/paused", "/tasks/resumed", "/tasks/exit", "/tasks/delete"}
	var got []string
	for len(got) < len(want) {
		env, err := st.Recv()
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		got = append(got, env.Topic)
		if env.Namespace != "vztest" {
			t.Errorf("event %s in namespace %q", env.Topic, env.Namespace)
		}
		v, err := typeurl.UnmarshalAny(env.Event)
		if err != nil {
			t.Fatal(err)
		}
		if e, ok := v.(*eventstypes.TaskExit); ok && e.ID == id && e.ExitStatus != 137 {
			t.Errorf("init exit event with status %d", e.ExitStatus)
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("events\n got %v\nwant %v", got, want)
	}
}

func TestShutdown(t *testing.T) {
	a := startAgent(t)
	id := "shut"
	a.create(id, spec(id, []string{"sleep", "60"}), ioOpts{})
	a.start(id, "")
	// Ignored while a container lives, as in the runc shim.
	if _, err := a.tasks.Shutdown(ctxNS(), &taskAPI.ShutdownRequest{ID: id}); err != nil {
		t.Fatal(err)
	}
	if st := a.state(id, ""); st.Status != task.Status_RUNNING {
		t.Fatalf("after shutdown with a live task: %v", st.Status)
	}
	a.kill(id, "", unix.SIGKILL, false)
	a.wait(id, "")
	a.remove(id)
	a.tasks.Shutdown(ctxNS(), &taskAPI.ShutdownRequest{ID: id})
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("agent still running after Shutdown with no task left")
	}
}

func TestStopOnSignalCleansUp(t *testing.T) {
	a := startAgent(t)
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("sig-%d", i)
		a.create(id, spec(id, []string{"sleep", "60"}), ioOpts{})
		a.start(id, "")
	}
	pid := a.cmd.Process.Pid
	a.cmd.Process.Signal(unix.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not stop on SIGTERM")
	}
	mi, _ := readFile("/proc/self/mountinfo")
	if strings.Contains(mi, a.dir) {
		t.Errorf("mounts left under %s after the agent stopped", a.dir)
	}
	if out, _ := readFile("/proc/" + fmt.Sprint(pid) + "/status"); out != "" {
		t.Errorf("agent process still exists")
	}
	for i := 0; i < 3; i++ {
		if _, err := readFile(fmt.Sprintf("/sys/fs/cgroup/pids/vz-agent-test/sig-%d/cgroup.procs", i)); err == nil {
			procs, _ := readFile(fmt.Sprintf("/sys/fs/cgroup/pids/vz-agent-test/sig-%d/cgroup.procs", i))
			if strings.TrimSpace(procs) != "" {
				t.Errorf("container sig-%d still has processes: %s", i, procs)
			}
		}
	}
}

func waitForOutput(t *testing.T, c *captured, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if bytes.Contains(c.snapshot(), []byte(want)) {
			return
		}
		select {
		case <-c.done:
			if !bytes.Contains(c.snapshot(), []byte(want)) {
				t.Fatalf("stream ended without %q: %q", want, c.snapshot())
			}
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("no %q within 30s: %q", want, c.snapshot())
}

func (a *testAgent) state(id, execID string) *taskAPI.StateResponse {
	a.t.Helper()
	st, err := a.tasks.State(ctxNS(), &taskAPI.StateRequest{ID: id, ExecID: execID})
	if err != nil {
		a.t.Fatalf("state %s/%s: %v", id, execID, errgrpc.ToNative(err))
	}
	return st
}

func (a *testAgent) kill(id, execID string, sig unix.Signal, all bool) {
	a.t.Helper()
	if _, err := a.tasks.Kill(ctxNS(), &taskAPI.KillRequest{ID: id, ExecID: execID, Signal: uint32(sig), All: all}); err != nil {
		a.t.Fatalf("kill %s/%s: %v", id, execID, errgrpc.ToNative(err))
	}
}

func (a *testAgent) closeStdin(id, execID string) {
	a.t.Helper()
	if _, err := a.tasks.CloseIO(ctxNS(), &taskAPI.CloseIORequest{ID: id, ExecID: execID, Stdin: true}); err != nil {
		a.t.Fatalf("closeio: %v", err)
	}
}

// BenchmarkContainerRun measures one container's create-start-wait-delete
// through the agent, and reports the agent's size and memory after it:
// the target is under 15 MiB of RSS (make bench).
func BenchmarkContainerRun(b *testing.B) {
	a := startAgent(b)
	for i := 0; b.Loop(); i++ {
		id := fmt.Sprintf("bench-%d", i)
		if err := a.runConcurrent(id, spec(id, []string{"echo", "hi"}), "hi\n"); err != nil {
			b.Fatal(err)
		}
	}
	// RSS split: anonymous (heap, stacks) and file-backed (the binary's
	// pages; in the guest they live in the tmpfs root, so they cost RAM too).
	rollup, err := readFile(fmt.Sprintf("/proc/%d/smaps_rollup", a.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	kib := map[string]float64{}
	for _, l := range strings.Split(rollup, "\n") {
		if f := strings.Fields(l); len(f) == 3 {
			var v float64
			fmt.Sscan(f[1], &v)
			kib[strings.TrimSuffix(f[0], ":")] = v
		}
	}
	b.ReportMetric(kib["Rss"]/1024, "rss-MiB")
	b.ReportMetric(kib["Anonymous"]/1024, "rss-anon-MiB")
	b.ReportMetric((kib["Rss"]-kib["Anonymous"])/1024, "rss-file-MiB")
	if fi, err := os.Stat(agentBin); err == nil {
		b.ReportMetric(float64(fi.Size())/(1<<20), "binary-MiB")
	}
}
