package sysinit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestShutdownRefusesUnlessPID1 calls the real Shutdown in the test process:
// it must return an error having done nothing at all.
func TestShutdownRefusesUnlessPID1(t *testing.T) {
	if os.Getpid() == 1 {
		t.Skip("SKIPPED: the test binary is PID 1 here; calling Shutdown would really shut down")
	}
	before, err := readMountinfo()
	if err != nil {
		t.Fatal(err)
	}
	for _, reboot := range []bool{false, true} {
		err := Shutdown(context.Background(), reboot)
		if err == nil || !strings.Contains(err.Error(), "not PID 1") {
			t.Errorf("Shutdown(reboot=%v) = %v; want a refusal", reboot, err)
		}
	}
	after, err := readMountinfo()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Error("mounts changed across a refused Shutdown")
	}
}

// TestShutdownAsPID1 runs Shutdown for real in a child that is PID 1 of a new
// PID namespace, with a private mount namespace. There reboot(2) ends the
// namespace instead of the machine, and reports how: the child's init is
// killed by SIGINT for power-off and by SIGHUP for restart.
func TestShutdownAsPID1(t *testing.T) {
	for name, want := range map[string]syscall.Signal{
		"shutdown-poweroff": syscall.SIGINT,
		"shutdown-reboot":   syscall.SIGHUP,
	} {
		t.Run(name, func(t *testing.T) {
			ws, out := runChild(t, name, t.TempDir(), &syscall.SysProcAttr{
				Cloneflags:   syscall.CLONE_NEWPID,
				Unshareflags: syscall.CLONE_NEWNS,
			})
			if !ws.Signaled() || ws.Signal() != want {
				t.Fatalf("child: %s; want killed by %v\n%s", describe(ws), want, out)
			}
		})
	}
}

func childShutdown(reboot bool) error {
	if os.Getpid() != 1 {
		return fmt.Errorf("not PID 1 (pid %d): no PID namespace", os.Getpid())
	}
	if err := isolateMounts(); err != nil {
		return err
	}
	err := Shutdown(context.Background(), reboot)
	return fmt.Errorf("Shutdown returned: %v", err)
}

// TestFatal checks that a process other than PID 1 reports and exits 1.
func TestFatal(t *testing.T) {
	ws, out := runChild(t, "fatal", "", nil)
	if !ws.Exited() || ws.ExitStatus() != 1 {
		t.Errorf("child: %s; want exit status 1", describe(ws))
	}
	if !strings.Contains(out, "vz-agent: fatal: boom: it broke\n") {
		t.Errorf("output %q lacks the fatal message", out)
	}
}

func childFatal(string) error {
	Fatal(fmt.Errorf("boom: %w", errors.New("it broke")))
	return errors.New("Fatal returned")
}

// TestFatalAsPID1 runs Fatal as PID 1 of a new PID namespace, with files of
// ours bind-mounted over /dev/console and /dev/kmsg in its private mount
// namespace: it must write its message to both, then power off.
func TestFatalAsPID1(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"console", "kmsg"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ws, out := runChild(t, "fatal-pid1", dir, &syscall.SysProcAttr{
		Cloneflags:   syscall.CLONE_NEWPID,
		Unshareflags: syscall.CLONE_NEWNS,
	})
	if !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Fatalf("child: %s; want a power-off (killed by SIGINT)\n%s", describe(ws), out)
	}
	for f, want := range map[string]string{
		"console": "vz-agent: fatal: boom\n",
		"kmsg":    "<2>vz-agent: fatal: boom\n",
	} {
		got, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s: %q; want %q", f, got, want)
		}
	}
}

func childFatalPID1(dir string) error {
	if os.Getpid() != 1 {
		return fmt.Errorf("not PID 1 (pid %d): no PID namespace", os.Getpid())
	}
	if err := isolateMounts(); err != nil {
		return err
	}
	for _, f := range []string{"console", "kmsg"} {
		if err := unix.Mount(filepath.Join(dir, f), "/dev/"+f, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("cover /dev/%s: %w", f, err)
		}
	}
	Fatal(errors.New("boom"))
	return errors.New("Fatal returned")
}

// TestUnmountAll mounts a small tree, with a busy mount in it, in a child's
// private mount namespace, and unmounts it.
func TestUnmountAll(t *testing.T) {
	dir := t.TempDir()
	expectChildOK(t, "unmountall", dir, &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS})
	if leaked := mountsUnder(t, dir); len(leaked) > 0 {
		t.Errorf("child mounts leaked into the test's namespace: %+v", leaked)
	}
}

func childUnmountAll(dir string) error {
	if err := isolateMounts(); err != nil {
		return err
	}
	for _, p := range []string{"a", "a/b", "a/b/c", "d"} {
		mp := filepath.Join(dir, p)
		if err := os.MkdirAll(mp, 0o755); err != nil {
			return err
		}
		if err := unix.Mount("tmpfs", mp, "tmpfs", 0, ""); err != nil {
			return err
		}
	}
	if err := unix.Mount(filepath.Join(dir, "d"), filepath.Join(dir, "a/b/c"), "", unix.MS_BIND, ""); err != nil {
		return err
	}
	// An open file keeps a/b busy: it needs the lazy detach.
	held, err := os.Create(filepath.Join(dir, "a/b/held"))
	if err != nil {
		return err
	}
	defer held.Close()

	before, _ := readMountinfo()
	if err := unmountAll(context.Background(), dir); err != nil {
		return fmt.Errorf("unmountAll: %w", err)
	}
	after, err := readMountinfo()
	if err != nil {
		return err
	}
	for _, m := range after {
		if isUnder(m.mountpoint, dir) {
			return fmt.Errorf("still mounted: %s (%s)", m.mountpoint, m.fstype)
		}
	}
	// Nothing outside dir was touched.
	if n := len(before) - len(after); n != 5 {
		return fmt.Errorf("%d mounts gone; want the 5 under %s", n, dir)
	}
	if _, err := held.WriteString("still usable after a lazy detach"); err != nil {
		return err
	}

	// A cancelled context stops it.
	if err := unix.Mount("tmpfs", filepath.Join(dir, "d"), "tmpfs", 0, ""); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := unmountAll(ctx, dir); !errors.Is(err, context.Canceled) {
		return fmt.Errorf("unmountAll with a cancelled context: %v", err)
	}
	if infos, _ := readMountinfo(); !isMounted(infos, filepath.Join(dir, "d"), "tmpfs") {
		return errors.New("unmountAll unmounted with a cancelled context")
	}
	return nil
}

func TestConsoleNotPID1(t *testing.T) {
	if os.Getpid() == 1 {
		t.Skip("SKIPPED: the test binary is PID 1")
	}
	c := Console()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// Close must leave stderr open.
	if _, err := unix.FcntlInt(os.Stderr.Fd(), unix.F_GETFD, 0); err != nil {
		t.Errorf("stderr closed by Console().Close(): %v", err)
	}
}
