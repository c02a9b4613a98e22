package sysinit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// fatalShutdownTimeout bounds the sync and unmounts Fatal does before it
// powers off, so that a hung filesystem cannot keep a dead VM running.
const fatalShutdownTimeout = 10 * time.Second

// Shutdown syncs, unmounts every filesystem it can (newest first, detaching
// busy ones lazily), syncs again and powers the machine off, or restarts it
// when reboot is true. When ctx ends, it stops waiting for sync and unmounts
// and goes straight to the power-off.
//
// It acts only when the caller is PID 1 and otherwise returns an error having
// done nothing: it must never power off the machine the tests run on. For PID
// 1 it returns only if the reboot system call fails. (PID 1 of a child PID
// namespace ends its namespace instead of the machine; reboot(2) explains.)
func Shutdown(ctx context.Context, reboot bool) error {
	cmd, what := unix.LINUX_REBOOT_CMD_POWER_OFF, "power off"
	if reboot {
		cmd, what = unix.LINUX_REBOOT_CMD_RESTART, "reboot"
	}
	// This check comes first: everything below is only for PID 1.
	if pid := os.Getpid(); pid != 1 {
		return fmt.Errorf("%s: refusing, not PID 1 (pid %d)", what, pid)
	}

	log.G(ctx).Infof("%s: syncing and unmounting filesystems", what)
	syncContext(ctx)
	if err := unmountAll(ctx, "/"); err != nil {
		log.G(ctx).WithError(err).Warn("unmount filesystems")
	}
	syncContext(ctx)

	err := unix.Reboot(cmd)
	log.G(ctx).WithError(err).Errorf("%s failed", what)
	return fmt.Errorf("%s: %w", what, err)
}

// syncContext calls sync(2) but waits for it only as long as ctx allows.
func syncContext(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		unix.Sync()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		log.G(ctx).Warn("sync did not finish in time")
	}
}

// unmountAll unmounts every mount at or below under, except "/", in reverse
// order of /proc/self/mountinfo so that children go before their parents. A
// busy mount is detached lazily; a mount that vanished with a detached parent
// is not an error.
func unmountAll(ctx context.Context, under string) error {
	infos, err := readMountinfo()
	if err != nil {
		return fmt.Errorf("unmount all: %w", err)
	}
	under = filepath.Clean(under)
	var errs []error
	for i := len(infos) - 1; i >= 0; i-- {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		mp := infos[i].mountpoint
		if mp == "/" || !isUnder(mp, under) {
			continue
		}
		err := unix.Unmount(mp, 0)
		if errors.Is(err, unix.EBUSY) {
			err = unix.Unmount(mp, unix.MNT_DETACH)
		}
		switch {
		case err == nil:
			log.G(ctx).WithField("mountpoint", mp).Debug("unmounted")
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			// Already gone: it was below a mount detached before it.
		default:
			errs = append(errs, fmt.Errorf("unmount %s (%s): %w", mp, infos[i].fstype, err))
		}
	}
	return errors.Join(errs...)
}

func isUnder(path, dir string) bool {
	return dir == "/" || path == dir || strings.HasPrefix(path, dir+"/")
}

// Fatal reports err and ends the agent. As PID 1 it writes
// "vz-agent: fatal: <err>" to the console (stderr if the console cannot be
// opened) and to the kernel log, then powers the VM off: the kernel would
// otherwise panic with an unexplained "Attempted to kill init". Any other
// process just writes the message to stderr and exits 1.
func Fatal(err error) {
	msg := fmt.Sprintf("vz-agent: fatal: %v\n", err)
	if os.Getpid() != 1 {
		os.Stderr.WriteString(msg)
		os.Exit(1)
	}
	console := Console()
	io.WriteString(console, msg)
	writeKmsg(msg)

	ctx, cancel := context.WithTimeout(context.Background(), fatalShutdownTimeout)
	defer cancel()
	serr := Shutdown(ctx, false)
	// Still here: power-off failed. Exiting panics the kernel, which at least
	// ends the VM (with panic=-1 on the command line) instead of hanging it;
	// the messages above explain why.
	fmt.Fprintf(console, "vz-agent: fatal: %v\n", serr)
	console.Close()
	os.Exit(1)
}

// Console returns a writer to the system console, where the shim collects the
// guest's log. PID 1 gets /dev/console; other processes, or PID 1 when the
// console cannot be opened, get stderr (which Close leaves open).
func Console() io.WriteCloser {
	if os.Getpid() == 1 {
		if f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
			return f
		}
	}
	return nopCloser{os.Stderr}
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// writeKmsg puts msg in the kernel log, which outlives the console when the
// console is not being captured.
func writeKmsg(msg string) {
	f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	// The kernel rejects records longer than about 1 KiB.
	const max = 900
	msg = strings.TrimSuffix(msg, "\n")
	if len(msg) > max {
		msg = msg[:max] + "..."
	}
	f.WriteString("<2>" + msg + "\n") // 2: LOG_CRIT
}
