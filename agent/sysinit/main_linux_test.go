package sysinit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Tests that need namespaces re-execute the test binary as a child that runs
// one of these functions instead of the tests. Children that mount anything
// call isolateMounts first, so that nothing reaches the host's mounts.
const (
	childEnv       = "SYSINIT_TEST_CHILD"
	childDirEnv    = "SYSINIT_TEST_DIR"
	parentMntNSEnv = "SYSINIT_TEST_PARENT_MNTNS"
)

var children = map[string]func(dir string) error{
	"mountbase":         childMountBase,
	"unmountall":        childUnmountAll,
	"shutdown-poweroff": func(string) error { return childShutdown(false) },
	"shutdown-reboot":   func(string) error { return childShutdown(true) },
	"fatal":             childFatal,
	"fatal-pid1":        childFatalPID1,
	"bindroot":          childBindRoot,
	"linkup":            childLinkUp,
	"hostname":          childHostname,
}

func TestMain(m *testing.M) {
	if name := os.Getenv(childEnv); name != "" {
		f, ok := children[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown test child %q\n", name)
			os.Exit(2)
		}
		if err := f(os.Getenv(childDirEnv)); err != nil {
			fmt.Fprintf(os.Stderr, "test child %s: %v\n", name, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: this test needs root (namespaces, mounts); run the package tests as root")
	}
}

// runChild runs the named child function in a new process with attr and
// returns how it ended and what it printed.
func runChild(t *testing.T, name, dir string, attr *syscall.SysProcAttr) (syscall.WaitStatus, string) {
	t.Helper()
	requireRoot(t)
	mntns, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+name, childDirEnv+"="+dir, parentMntNSEnv+"="+mntns,
		// The race detector otherwise sleeps a second at every exit.
		"GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	cmd.SysProcAttr = attr
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run child %s: %v\n%s", name, err, out.String())
		}
	}
	return cmd.ProcessState.Sys().(syscall.WaitStatus), out.String()
}

// expectChildOK runs a child and fails the test unless it exits 0.
func expectChildOK(t *testing.T, name, dir string, attr *syscall.SysProcAttr) {
	t.Helper()
	ws, out := runChild(t, name, dir, attr)
	if !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("child %s: %s\n%s", name, describe(ws), out)
	}
}

func describe(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return fmt.Sprintf("exit status %d", ws.ExitStatus())
}

// isolateMounts refuses to go on unless the child is in a mount namespace of
// its own, and makes every mount in it private so nothing propagates out.
func isolateMounts() error {
	parent := os.Getenv(parentMntNSEnv)
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil || parent == "" || self == parent {
		return fmt.Errorf("refusing to mount: not in a mount namespace of our own (self %q, parent %q, %v)", self, parent, err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / rprivate: %w", err)
	}
	return nil
}

// mountsUnder lists the mounts of the calling process at or below dir.
func mountsUnder(t *testing.T, dir string) []mountInfo {
	t.Helper()
	infos, err := readMountinfo()
	if err != nil {
		t.Fatal(err)
	}
	var out []mountInfo
	for _, m := range infos {
		if isUnder(m.mountpoint, dir) {
			out = append(out, m)
		}
	}
	return out
}
