package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"
	containerd "github.com/containerd/containerd/v2/client"
	"golang.org/x/sys/unix"
)

// runtimeCase is one runtime every scenario runs with.
type runtimeCase struct {
	name    string // subtest name
	runtime string // containerd runtime name (ctr --runtime)
	vm      bool   // each task runs in its own VM
}

func runtimeCases() []runtimeCase {
	return []runtimeCase{
		{name: "runc", runtime: runcRuntime},
		{name: "vz", runtime: vzRuntime, vm: true},
	}
}

// skipReason is why rt cannot run here, or "".
func (rt runtimeCase) skipReason() string {
	if suite.skipAll != "" {
		return suite.skipAll
	}
	if rt.vm && suite.skipVZ != "" {
		return "vz: " + suite.skipVZ
	}
	return ""
}

// missingPrereq ends a test whose prerequisite is absent: with CI=true it fails (CI must run
// it), elsewhere it skips, loudly, saying what is missing.
func missingPrereq(tb testing.TB, what string) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf("prerequisite missing in CI: %s", what)
	}
	tb.Skip(skipPrefix + what)
}

// forEachRuntime runs fn as a subtest for every runtime, each with its own harness.
func forEachRuntime(t *testing.T, fn func(t *testing.T, h *harness)) {
	t.Helper()
	for _, rt := range runtimeCases() {
		t.Run(rt.name, func(t *testing.T) {
			fn(t, newHarness(t, rt))
		})
	}
}

// harness is one test's (or subtest's) view of the suite's containerd with one runtime. When the
// test ends it removes the containers the test made, checks for leaks, and on failure shows
// containerd's log of the test.
type harness struct {
	tb       testing.TB
	d        *daemon
	rt       runtimeCase
	base     baseline
	logStart int64
	ids      []string
	// vzConfig, when set, replaces the daemon's runtime options file of the vz runtime.
	vzConfig string
}

// newHarness skips tb (loudly) when rt cannot run here.
func newHarness(tb testing.TB, rt runtimeCase) *harness {
	tb.Helper()
	if reason := rt.skipReason(); reason != "" {
		tb.Skip(skipPrefix + reason)
	}
	d := suite.d
	d.mend(tb, "before the test began")
	h := &harness{tb: tb, d: d, rt: rt, base: d.takeBaseline(), logStart: d.logSize()}
	tb.Cleanup(h.finish)
	return h
}

// mend fails tb if containerd went away (when: before or during the test), with the end of its
// log, and starts it again when it exited, so that one lost containerd fails one test, not all
// that follow.
func (d *daemon) mend(tb testing.TB, when string) {
	tb.Helper()
	trouble := d.trouble()
	if trouble == "" {
		return
	}
	var b strings.Builder
	dumpLog(&b, "containerd", d.logPath, max(0, d.logSize()-64<<10))
	tb.Errorf("%s %s\n%s", trouble, when, b.String())
	select {
	case <-d.exited:
		if err := d.startAgain(); err != nil {
			tb.Fatalf("starting containerd again: %v", err)
		}
	default:
	}
}

// leakTimeout is how long a finished test may take to be clean: shims and VMs exit
// asynchronously after their last task is deleted.
const leakTimeout = 20 * time.Second

func (h *harness) finish() {
	tb := h.tb
	h.d.mend(tb, "during the test")
	// Whatever the test left: expected when it failed half-way, a bug of the test otherwise.
	report := tb.Errorf
	if tb.Failed() {
		report = tb.Logf
	}
	for _, id := range h.ids {
		ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
		if r, err := h.d.ctr(ctx, nil, "tasks", "delete", "--force", id); err == nil && r.code == 0 {
			report("task %s was still there at the end of the test: deleted it", id)
		}
		if r, err := h.d.ctr(ctx, nil, "containers", "delete", id); err == nil && r.code == 0 {
			report("container %s was still there at the end of the test: deleted it", id)
		}
		cancel()
	}
	problems := h.d.checkLeaks(&h.base, leakTimeout)
	if len(problems) > 0 {
		tb.Fail()
	}
	if tb.Failed() {
		var b strings.Builder
		h.d.dumpLog(&b, h.logStart)
		tb.Log(b.String())
	}
	// After the log, so that the end of the output says what leaked.
	if len(problems) > 0 {
		tb.Errorf("leaked after the test (waited %s):\n  %s", leakTimeout, strings.Join(problems, "\n  "))
		h.d.reap()
	}
}

// newID returns a container ID unique in the run that the harness deletes if the test does not.
func (h *harness) newID(name string) string {
	idCounter++
	id := fmt.Sprintf("%s-%s-%d", name, h.rt.name, idCounter)
	h.ids = append(h.ids, id)
	return id
}

var idCounter int

// runArgs is `ctr run` with the runtime's options, the flags, the image, id and the command.
func (h *harness) runArgs(flags []string, id string, command ...string) []string {
	args := []string{"run", "--runtime", h.rt.runtime, "--snapshotter", snapshotter}
	if h.rt.vm {
		cfg := h.d.vzConfig
		if h.vzConfig != "" {
			cfg = h.vzConfig
		}
		args = append(args, "--runtime-config-path", cfg)
	} else {
		args = append(args, "--runc-root", h.d.runcRoot)
	}
	args = append(args, flags...)
	args = append(args, imageName, id)
	return append(args, command...)
}

// fifoFlag puts ctr's FIFOs in the temporary directory, where the leak checker looks.
func (h *harness) fifoFlag() []string { return []string{"--fifo-dir", h.d.fifoDir} }

// ctr runs ctr and fails the test if it could not run or timed out.
func (h *harness) ctr(args ...string) result {
	h.tb.Helper()
	return h.ctrStdin(nil, args...)
}

func (h *harness) ctrStdin(stdin io.Reader, args ...string) result {
	h.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
	defer cancel()
	r, err := h.d.ctr(ctx, stdin, args...)
	if err != nil {
		h.tb.Fatalf("%v\n%s", err, r)
	}
	return r
}

// ctrOK runs ctr and fails the test unless it exits 0; it returns the standard output.
func (h *harness) ctrOK(args ...string) string {
	h.tb.Helper()
	r := h.ctr(args...)
	if r.code != 0 {
		h.tb.Fatalf("unexpected exit status: %s", r)
	}
	return r.stdout
}

// taskInfo is one line of `ctr tasks ls`.
type taskInfo struct {
	pid    int
	status string
}

// task returns the task id as `ctr tasks ls` shows it; ok is false when there is no such task.
func (h *harness) task(id string) (info taskInfo, ok bool) {
	h.tb.Helper()
	out := h.ctrOK("tasks", "ls")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				h.tb.Fatalf("tasks ls: bad pid in %q", line)
			}
			return taskInfo{pid: pid, status: f[2]}, true
		}
	}
	return taskInfo{}, false
}

// waitStatus polls `ctr tasks ls` until task id has status want, for at most timeout; it returns
// how long that took.
func (h *harness) waitStatus(id, want string, timeout time.Duration) time.Duration {
	h.tb.Helper()
	start := time.Now()
	last := "(no task)"
	for {
		info, ok := h.task(id)
		if ok {
			if info.status == want {
				return time.Since(start)
			}
			last = info.status
		}
		if time.Since(start) > timeout {
			h.tb.Fatalf("task %s: status %s after %s, want %s", id, last, timeout, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// exitCodeRE is what `ctr tasks delete` logs for a task that exited non-zero.
var exitCodeRE = regexp.MustCompile(`exit with non-zero exit code (\d+)`)

// deleteTask deletes the stopped task id and returns its exit code as ctr reports it.
func (h *harness) deleteTask(id string) int {
	h.tb.Helper()
	r := h.ctr("tasks", "delete", id)
	if r.code != 0 {
		h.tb.Fatalf("delete task: %s", r)
	}
	m := exitCodeRE.FindStringSubmatch(r.stderr)
	if m == nil {
		return 0
	}
	code, _ := strconv.Atoi(m[1])
	return code
}

// removeContainer deletes container id (and its snapshot).
func (h *harness) removeContainer(id string) {
	h.tb.Helper()
	h.ctrOK("containers", "delete", id)
}

// killAndRemove ends a running task with SIGKILL and deletes it and its container.
func (h *harness) killAndRemove(id string) {
	h.tb.Helper()
	h.ctrOK("tasks", "kill", "--signal", "SIGKILL", id)
	h.waitStatus(id, "STOPPED", 30*time.Second)
	if code := h.deleteTask(id); code != 137 {
		h.tb.Errorf("task %s killed by SIGKILL: exit code %d, want 137", id, code)
	}
	h.removeContainer(id)
}

// ctrTTY runs ctr with a pseudo-terminal of rows x cols as its stdin, stdout and stderr (and
// controlling terminal), and returns what ctr wrote to it less carriage returns (terminals turn
// "\n" into "\r\n", and there are two of them here: the container's and ctr's).
func (h *harness) ctrTTY(rows, cols uint16, args ...string) (result, error) {
	h.tb.Helper()
	master, slavePath, err := console.NewPty()
	if err != nil {
		return result{}, fmt.Errorf("new pty: %w", err)
	}
	defer master.Close()
	if err := master.Resize(console.WinSize{Height: rows, Width: cols}); err != nil {
		return result{}, fmt.Errorf("resize pty: %w", err)
	}
	slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return result{}, fmt.Errorf("open %s: %w", slavePath, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
	defer cancel()
	cmd := h.d.ctrCommand(ctx, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	start := time.Now()
	err = cmd.Start()
	slave.Close() // ctr holds it now: reading the master ends (EIO) when ctr is gone
	if err != nil {
		return result{}, fmt.Errorf("start ctr: %w", err)
	}
	var out bytes.Buffer
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(&out, master)
		copied <- err
	}()
	waitErr := cmd.Wait()
	select {
	case err := <-copied:
		if err != nil && !errors.Is(err, syscall.EIO) {
			return result{}, fmt.Errorf("read pty: %w", err)
		}
	case <-time.After(10 * time.Second):
		return result{}, errors.New("pty still open 10s after ctr exited")
	}
	r := result{args: args, stdout: strings.ReplaceAll(out.String(), "\r", ""), elapsed: time.Since(start)}
	return finish(ctx, cmd, r, waitErr)
}

// client is a containerd client in the harness's namespace, closed when the test ends.
func (h *harness) client() *containerd.Client {
	h.tb.Helper()
	c, err := containerd.New(h.d.address, containerd.WithDefaultNamespace(h.d.namespace))
	if err != nil {
		h.tb.Fatal(err)
	}
	h.tb.Cleanup(func() { c.Close() })
	return c
}

// loadTask is the container id and its task, through c.
func (h *harness) loadTask(ctx context.Context, c *containerd.Client, id string) (containerd.Container, containerd.Task) {
	h.tb.Helper()
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		h.tb.Fatal(err)
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		h.tb.Fatal(err)
	}
	return ctr, task
}
