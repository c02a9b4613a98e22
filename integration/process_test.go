package integration

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startHeld starts cmd from a goroutine that holds its OS thread until cmd has exited, then calls
// exited. The daemons the suite starts have a Pdeathsig so that they die with a test binary that
// dies, but Linux sends it when the thread that forked the child exits, not the process: the Go
// runtime retires a thread whose goroutine ends locked to it (containerd's netns.NewNetNS does
// that on purpose), and a daemon forked from such a thread would get its death signal in the
// middle of the run. A held thread is neither retired nor lent to another goroutine.
func startHeld(cmd *exec.Cmd, exited func()) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		exited()
	}()
	return <-started
}

// TestStartHeld: a child with a Pdeathsig dies when the thread that forked it is retired (why
// startHeld exists), and one started by startHeld lives on while threads are retired around it.
func TestStartHeld(t *testing.T) {
	sleeper := func() *exec.Cmd {
		cmd := exec.Command("sleep", "600")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		return cmd
	}
	// retireThreads ends n goroutines locked to their threads: the runtime retires those threads.
	retireThreads := func(n int) {
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
			}()
		}
		wg.Wait()
	}
	waitExit := func(exited <-chan struct{}, within time.Duration) bool {
		select {
		case <-exited:
			return true
		case <-time.After(within):
			return false
		}
	}

	// Without it: forked from a thread that is then retired. Not from the main thread, which the
	// runtime never retires (it parks it): the goroutine tries again elsewhere.
	bare := sleeper()
	started := make(chan error)
	for {
		go func() {
			runtime.LockOSThread()
			if syscall.Gettid() == syscall.Getpid() {
				runtime.UnlockOSThread()
				started <- errMainThread
				return
			}
			started <- bare.Start()
		}()
		if err := <-started; err == nil {
			break
		} else if err != errMainThread {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	bareExited := make(chan struct{})
	go func() {
		_ = bare.Wait()
		close(bareExited)
	}()
	if !waitExit(bareExited, 10*time.Second) {
		_ = bare.Process.Kill()
		t.Fatal("a child forked from a thread the runtime retired lives on: the reason for startHeld is gone")
	}
	if ws, ok := bare.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("the bare child ended %v, want its death signal SIGTERM", bare.ProcessState)
	}

	held := sleeper()
	heldExited := make(chan struct{})
	if err := startHeld(held, func() { close(heldExited) }); err != nil {
		t.Fatal(err)
	}
	retireThreads(50)
	if waitExit(heldExited, time.Second) {
		t.Fatalf("the held child died while threads were retired: %v", held.ProcessState)
	}
	_ = held.Process.Kill()
	if !waitExit(heldExited, 10*time.Second) {
		t.Fatal("startHeld did not report the held child's exit")
	}
}

var errMainThread = errors.New("on the main thread")

// TestHarnessMends: a containerd that went away between two tests fails the next one, which
// says how it ended, and is started again, so the tests after it run.
func TestHarnessMends(t *testing.T) {
	if reason := (runtimeCase{name: "runc", runtime: runcRuntime}).skipReason(); reason != "" {
		t.Skip(skipPrefix + reason)
	}
	d := suite.d
	d.end(t, syscall.SIGTERM)
	rec := &recordingTB{TB: t}
	d.mend(rec, "before the test began")
	// containerd exits 0 on SIGTERM; its log (debug) says why.
	if got := rec.errs.String(); !strings.Contains(got, "exited at") || !strings.Contains(got, "exit status 0") || !strings.Contains(got, `msg="received signal" signal=terminated`) {
		t.Errorf("mend reported %q, want when and how containerd ended, and its log's end", got)
	}
	if trouble := d.trouble(); trouble != "" {
		t.Fatalf("after mend: %s", trouble)
	}
	h := newHarness(t, runtimeCase{name: "runc", runtime: runcRuntime})
	h.ctrOK("version")
}

// recordingTB keeps what a test reported instead of failing it.
type recordingTB struct {
	testing.TB
	errs strings.Builder
}

func (r *recordingTB) Helper() {}
func (r *recordingTB) Errorf(format string, args ...any) {
	fmt.Fprintf(&r.errs, format+"\n", args...)
}
func (r *recordingTB) Fatalf(format string, args ...any) {
	r.TB.Helper()
	r.TB.Fatalf(format, args...)
}
