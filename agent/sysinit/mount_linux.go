package sysinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// mountSpec is one filesystem to mount; target is relative to the root.
type mountSpec struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// baseMounts is what a PID 1 needs, parents before children.
func baseMounts() []mountSpec {
	const (
		nosuid = unix.MS_NOSUID
		nodev  = unix.MS_NODEV
		noexec = unix.MS_NOEXEC
	)
	return []mountSpec{
		{"proc", "/proc", "proc", nosuid | nodev | noexec, ""},
		{"sysfs", "/sys", "sysfs", nosuid | nodev | noexec, ""},
		{"devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755"},
		// Each devpts mount is a private instance since Linux 4.7;
		// newinstance documents the intent. gid 5 is the conventional tty group.
		{"devpts", "/dev/pts", "devpts", nosuid | noexec, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
		{"shm", "/dev/shm", "tmpfs", nosuid | nodev, "mode=1777"},
		{"mqueue", "/dev/mqueue", "mqueue", nosuid | nodev | noexec, ""},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid | nodev | noexec, ""},
		{"tmpfs", "/run", "tmpfs", nosuid | nodev, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", nosuid | nodev, "mode=1777"},
	}
}

// MountBase mounts the filesystems a PID 1 needs under root ("/" in the
// guest): proc, sysfs, devtmpfs, a private devpts instance with /dev/ptmx
// pointing at it, /dev/shm, mqueue, cgroup2 with every available controller
// enabled for its children, and tmpfs on /run and /tmp. It creates missing
// mountpoints and skips filesystems already mounted, so it can be called again.
func MountBase(root string) error {
	root, err := filepath.EvalSymlinks(root)
	if err != nil {
		return fmt.Errorf("mount base filesystems: %w", err)
	}
	if err := mountAll(root, baseMounts()); err != nil {
		return err
	}
	if err := linkPtmx(root); err != nil {
		return err
	}
	return enableControllers(filepath.Join(root, "sys/fs/cgroup"))
}

// mountAll mounts specs under root, skipping those already mounted.
// At boot /proc is not mounted yet, so mountinfo is read as soon as it can be:
// until then nothing can be mounted twice.
func mountAll(root string, specs []mountSpec) error {
	var infos []mountInfo
	haveInfo := false
	for _, m := range specs {
		if !haveInfo {
			var err error
			infos, err = readMountinfo()
			switch {
			case err == nil:
				haveInfo = true
			case !errors.Is(err, os.ErrNotExist):
				return fmt.Errorf("mount base filesystems: %w", err)
			}
		}
		target := filepath.Join(root, m.target)
		if isMounted(infos, target, m.fstype) {
			continue
		}
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, target, err)
		}
		if err := unix.Mount(m.source, target, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, target, err)
		}
	}
	return nil
}

// linkPtmx makes root/dev/ptmx open the devpts instance at root/dev/pts, as
// Documentation/filesystems/devpts.rst asks. A missing node becomes the
// symlink "pts/ptmx"; an existing node (devtmpfs creates one) is covered by a
// bind mount rather than replaced, which leaves the devtmpfs untouched.
func linkPtmx(root string) error {
	ptmx := filepath.Join(root, "dev/ptmx")
	target := filepath.Join(root, "dev/pts/ptmx")
	fi, err := os.Lstat(ptmx)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.Symlink("pts/ptmx", ptmx); err != nil {
			return fmt.Errorf("link %s: %w", ptmx, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("link %s: %w", ptmx, err)
	case fi.Mode()&os.ModeSymlink != 0:
		return nil // ours, from an earlier call
	}
	infos, err := readMountinfo()
	if err != nil {
		return fmt.Errorf("link %s: %w", ptmx, err)
	}
	if isMounted(infos, ptmx, "") {
		return nil
	}
	if err := unix.Mount(target, ptmx, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", target, ptmx, err)
	}
	return nil
}

// enableControllers enables in the cgroup at dir every controller it has, so
// that the containers' cgroups below it get memory, cpu, pids, io and so on.
func enableControllers(dir string) error {
	avail, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("enable cgroup controllers: %w", err)
	}
	enabled, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return fmt.Errorf("enable cgroup controllers: %w", err)
	}
	on := make(map[string]bool)
	for _, c := range strings.Fields(string(enabled)) {
		on[c] = true
	}
	f, err := os.OpenFile(filepath.Join(dir, "cgroup.subtree_control"), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("enable cgroup controllers: %w", err)
	}
	defer f.Close()
	var errs []error
	for _, c := range strings.Fields(string(avail)) {
		if on[c] {
			continue
		}
		// One write per controller: a write naming several fails as a whole.
		if _, err := f.WriteString("+" + c + "\n"); err != nil {
			errs = append(errs, fmt.Errorf("enable cgroup controller %s: %w", c, err))
		}
	}
	return errors.Join(errs...)
}
