package integration

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/fifo"
)

// TestShimEndsWithItsBundle: a shim whose task's bundle is removed while it runs (containerd
// cleaned the task up without deleting it through the shim: a client abandoned it after a
// Shutdown that came while the task still existed) stops its VM and exits on its own; containerd
// then finds the task stopped, and nothing is left (the harness checks processes, mounts,
// network namespaces, taps and files).
func TestShimEndsWithItsBundle(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	id := h.newID("orphan")
	h.ctrOK(h.runArgs(detached(), id, "sleep", "600")...)
	h.waitProcs(id, 1, 60*time.Second)
	shim := h.findShim(id)
	info, ok := h.task(id)
	if !ok || info.pid <= 0 {
		t.Fatalf("task %s: %+v", id, info)
	}
	vmm := info.pid
	// Moved away rather than removed: the shim sees it gone, and the test can give it back to
	// containerd's own cleanup afterwards.
	bundle := filepath.Join(h.d.state, "io.containerd.runtime.v2.task", h.d.namespace, id)
	aside := bundle + ".aside"
	if err := os.Rename(bundle, aside); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(aside)
	deadline := time.Now().Add(60 * time.Second)
	for alive(shim.pid) || alive(vmm) {
		if time.Now().After(deadline) {
			t.Fatalf("60 s after its bundle went: shim %d alive %v, VMM %d alive %v", shim.pid, alive(shim.pid), vmm, alive(vmm))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// containerd sees its shim gone and ends the task on its own.
	h.deleteAfterDeadShim(id, time.Until(deadline))
	// What containerd removes with a bundle (its work directory too), had it been the one.
	if work, err := os.Readlink(filepath.Join(aside, "work")); err == nil {
		os.RemoveAll(work)
	}
	if err := os.RemoveAll(aside); err != nil {
		t.Fatal(err)
	}
	h.removeContainer(id)
}

// alive tells whether process pid exists (and is not a zombie of ours).
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/proc", itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	for i := len(b) - 1; i > 0; i-- {
		if b[i] == ')' && i+2 < len(b) {
			return b[i+2] != 'Z'
		}
	}
	return true
}

// TestStdinReattach: a client that closes its writer of a process's stdin FIFO without CloseIO
// (it detached) and later opens a new one (it attached again) reaches the same process, which
// sees end-of-file only after CloseIO; as with the runc shim, which holds a write end itself.
func TestStdinReattach(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		id := h.newID("reattach")
		h.ctrOK(h.runArgs(detached(), id, "sleep", "600")...)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		c, task := h.loadTask(ctx, h.client(), id)
		spec, err := c.Spec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pspec := *spec.Process
		pspec.Args = []string{"cat"}
		pspec.Terminal = false
		fifos, err := cio.NewFIFOSetInDir(t.TempDir(), "e1", false)
		if err != nil {
			t.Fatal(err)
		}
		dio, err := cio.NewDirectIO(ctx, fifos)
		if err != nil {
			t.Fatal(err)
		}
		defer dio.Cancel()
		p, err := task.Exec(ctx, "e1", &pspec, func(string) (cio.IO, error) { return dio, nil })
		if err != nil {
			t.Fatal(err)
		}
		exited, err := p.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		out := make(chan string, 1)
		go func() {
			b, _ := io.ReadAll(dio.Stdout)
			out <- string(b)
		}()
		io.WriteString(dio.Stdin, "first\n")
		dio.Stdin.Close() // detach: no CloseIO
		select {
		case st := <-exited:
			t.Fatalf("cat exited (%d) when its client closed its writer", st.ExitCode())
		case <-time.After(time.Second):
		}
		w, err := fifo.OpenFifo(ctx, fifos.Stdin, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, "second\n")
		w.Close()
		if err := p.CloseIO(ctx, containerd.WithStdinCloser); err != nil {
			t.Fatal(err)
		}
		select {
		case st := <-exited:
			if st.ExitCode() != 0 {
				t.Errorf("cat exited %d", st.ExitCode())
			}
		case <-time.After(30 * time.Second):
			t.Fatal("cat did not exit after CloseIO")
		}
		if got := <-out; got != "first\nsecond\n" {
			t.Errorf("cat read %q, want both writers' lines", got)
		}
		if _, err := p.Delete(ctx); err != nil {
			t.Errorf("delete exec: %v", err)
		}
		h.killAndRemove(id)
	})
}
