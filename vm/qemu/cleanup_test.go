//go:build linux

package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startDecoy starts a process that waits on stdin, with extra args in its
// argv, and returns it.
func startDecoy(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/bin/sh", append([]string{"-c", "read x", "decoy"}, args...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	// Start can return before the kernel shows the new argv (empty until
	// exec is done). QEMU writes its pid file itself, after exec: so must
	// the test.
	want := []byte(strings.Join(args, "\x00"))
	for deadline := time.Now().Add(5 * time.Second); ; {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid))
		if bytes.Contains(b, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("decoy's argv never showed: %q", b)
		}
		time.Sleep(time.Millisecond)
	}
	return cmd
}

func writeStateFiles(t *testing.T, dir string, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, PidFile), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, LogFile), []byte("qemu said things\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "console.log"), []byte("guest said things\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func assertOnlyConsole(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != "console.log" {
			t.Errorf("%s left in the state dir", e.Name())
		}
	}
}

func TestCleanupKillsItsVM(t *testing.T) {
	dir := t.TempDir()
	// Our VM's argv names the pid file.
	cmd := startDecoy(t, "-pidfile", filepath.Join(dir, PidFile))
	writeStateFiles(t, dir, cmd.Process.Pid)
	if err := Cleanup(dir); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("the VM was not killed: %v", err)
	}
	assertOnlyConsole(t, dir)
}

func TestCleanupSparesRecycledPid(t *testing.T) {
	dir := t.TempDir()
	// The pid now belongs to someone else (another VM's pid file, even).
	cmd := startDecoy(t, "-pidfile", filepath.Join(t.TempDir(), PidFile))
	writeStateFiles(t, dir, cmd.Process.Pid)
	if err := Cleanup(dir); err != nil {
		t.Fatal(err)
	}
	if !alive(cmd.Process.Pid) {
		t.Error("Cleanup killed a process that is not its VM")
	}
	assertOnlyConsole(t, dir)
}

func TestCleanupNothing(t *testing.T) {
	if err := Cleanup(t.TempDir()); err != nil {
		t.Error(err)
	}
	if err := Cleanup("/nonexistent/state"); err != nil {
		t.Error(err)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and
	// may itself contain ") ".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z'
}
