//go:build linux

package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// Cleanup kills a QEMU that a dead shim left running for stateDir and
// removes its files there (not the console log), stamped disk clones included. It is for `shim delete`:
// the process it kills is identified by stateDir's pid file, and only if
// that process's command line still names the pid file (so a recycled pid is
// left alone). Nothing to clean up is not an error.
func Cleanup(stateDir string) error {
	dir, err := filepath.Abs(stateDir)
	if err != nil {
		return fmt.Errorf("qemu: cleanup: %w", err)
	}
	pidPath := filepath.Join(dir, PidFile)
	var errs []error
	if b, err := os.ReadFile(pidPath); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			if err := killIfOurs(pid, pidPath); err != nil {
				errs = append(errs, err)
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("qemu: cleanup: %w", err))
	}
	names := []string{PidFile, LogFile}
	clones, _ := filepath.Glob(filepath.Join(dir, vm.StampedClones))
	for _, c := range clones {
		names = append(names, filepath.Base(c))
	}
	for _, name := range names {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("qemu: cleanup: %w", err))
		}
	}
	return errors.Join(errs...)
}

// killIfOurs SIGKILLs pid if its argv has "-pidfile pidPath", and waits
// until it has exited. It holds a pidfd from before the check, so a pid
// recycled meanwhile is never signalled.
func killIfOurs(pid int, pidPath string) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil // gone
	}
	defer unix.Close(fd)
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil // gone
	}
	if !bytes.Contains(cmdline, []byte("\x00-pidfile\x00"+pidPath+"\x00")) {
		return nil // pid reused by another process
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		return fmt.Errorf("qemu: cleanup: killing pid %d: %w", pid, err)
	}
	// A pidfd polls readable once its process has exited (a zombie
	// counts: its parent, dead or not, reaps it).
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(killTimeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("qemu: cleanup: pid %d did not exit after SIGKILL", pid)
		}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("qemu: cleanup: waiting for pid %d: %w", pid, err)
		}
		if n > 0 {
			return nil
		}
	}
}
