package sysinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SwitchedRootEnv is set in the environment of the agent that SwitchRoot
// re-executes, so that the new agent knows the switch is done. SwitchRoot
// removes it from the environment again.
const SwitchedRootEnv = "VZ_AGENT_SWITCHED_ROOT"

// initUptimeEnv carries the uptime at which the first /init ran across
// SwitchRoot's re-exec (InitUptime).
const initUptimeEnv = "VZ_AGENT_INIT_UPTIME"

// newRootDir is where SwitchRoot binds the new root before moving it to "/".
const newRootDir = "/.sysinit-newroot"

// SwitchRoot moves the agent off the initramfs: runc's pivot_root cannot work
// while "/" is the kernel's rootfs, which has no parent mount. It makes a
// bind mount of the initramfs "/" (bindRoot: no copy, which took about 2 s
// of a TCG boot) and re-executes the agent with SwitchedRootEnv set. It does
// not return on success.
//
// When "/" is not the initramfs it does nothing and returns nil; when it is
// and the caller is not PID 1 it refuses. Call it first thing in main when
// PID 1, before starting goroutines that use files.
func SwitchRoot() error {
	marked := os.Getenv(SwitchedRootEnv) != ""
	if marked {
		// Consumed here, so that runc and the containers do not inherit it.
		os.Unsetenv(SwitchedRootEnv)
	}

	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return fmt.Errorf("switch root: statfs /: %w", err)
	}
	if st.Type != unix.RAMFS_MAGIC && st.Type != unix.TMPFS_MAGIC {
		return nil
	}

	// mountinfo tells rootfs from a tmpfs root; /proc may not be mounted yet.
	ownProc := false
	if _, err := os.Stat("/proc/self/mountinfo"); err != nil {
		if err := os.MkdirAll("/proc", 0o555); err != nil {
			return fmt.Errorf("switch root: %w", err)
		}
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("switch root: mount proc: %w", err)
		}
		ownProc = true
	}
	infos, err := readMountinfo()
	if ownProc {
		// Not carried over: MountBase mounts it again in the new root.
		if uerr := unix.Unmount("/proc", 0); uerr != nil && err == nil {
			err = fmt.Errorf("unmount proc: %w", uerr)
		}
		infos = withoutMountpoint(infos, "/proc")
	}
	if err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	root, ok := rootMount(infos)
	if !ok {
		return errors.New("switch root: no mount for / in mountinfo")
	}
	// The kernel's rootfs is its own parent; the bind mount that bindRoot
	// puts in its place has rootfs as its parent.
	if root.fstype != "rootfs" || root.parent != root.id {
		return nil
	}
	if marked {
		return fmt.Errorf("switch root: / is still the initramfs after a switch (%s=1)", SwitchedRootEnv)
	}
	// The switch empties the initramfs under every process: only init may.
	if pid := os.Getpid(); pid != 1 {
		return fmt.Errorf("switch root: refusing, not PID 1 (pid %d)", pid)
	}

	// The kernel ran us as argv[0] (rdinit=, /init by default).
	exe := "/init"
	if filepath.IsAbs(os.Args[0]) {
		exe = os.Args[0]
	}
	if err := bindRoot(newRootDir); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	env := append(os.Environ(), SwitchedRootEnv+"=1",
		fmt.Sprintf("%s=%d", initUptimeEnv, Uptime()))
	if err := syscall.Exec(exe, os.Args, env); err != nil {
		return fmt.Errorf("switch root: exec %s: %w", exe, err)
	}
	return nil
}

// rootMount returns the mount visible at "/": the last one listed there.
func rootMount(infos []mountInfo) (mountInfo, bool) {
	for i := len(infos) - 1; i >= 0; i-- {
		if infos[i].mountpoint == "/" {
			return infos[i], true
		}
	}
	return mountInfo{}, false
}

func withoutMountpoint(infos []mountInfo, mp string) []mountInfo {
	out := infos[:0:0]
	for _, m := range infos {
		if m.mountpoint != mp {
			out = append(out, m)
		}
	}
	return out
}

// bindRoot makes a recursive bind mount of "/" at newRoot the new "/" and
// chroots into it, leaving the current directory there. The files stay
// where they are, in the initramfs: nothing is copied. What runc needs is a
// root mount with a parent, which the bind mount has and rootfs has not.
func bindRoot(newRoot string) error {
	if err := os.Mkdir(newRoot, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if err := unix.Mount("/", newRoot, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind / on %s: %w", newRoot, err)
	}
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("chdir %s: %w", newRoot, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return nil
}

// Uptime is the guest's uptime: CLOCK_BOOTTIME, which starts about when the
// kernel is entered and counts while the VM is paused or suspended.
func Uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// InitUptime is the uptime at which the kernel ran /init: what the agent
// that SwitchRoot re-executed was told, else now. Call it after SwitchRoot;
// it takes the variable out of the environment.
func InitUptime() time.Duration {
	v, ok := os.LookupEnv(initUptimeEnv)
	if !ok {
		return Uptime()
	}
	os.Unsetenv(initUptimeEnv)
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return Uptime()
	}
	return time.Duration(n)
}
