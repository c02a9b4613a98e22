package sysinit

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// SwitchedRootEnv is set in the environment of the agent that SwitchRoot
// re-executes, so that the new agent knows the switch is done. SwitchRoot
// removes it from the environment again.
const SwitchedRootEnv = "VZ_AGENT_SWITCHED_ROOT"

// newRootDir is where SwitchRoot builds the new root before moving it to "/".
const newRootDir = "/.sysinit-newroot"

// SwitchRoot moves the agent off the initramfs: runc's pivot_root cannot work
// while "/" is the kernel's rootfs. It mounts a tmpfs, copies the initramfs
// into it (deleting the originals to give their memory back), makes it "/"
// the way busybox switch_root does, and re-executes the agent with
// SwitchedRootEnv set. It does not return on success.
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
	if root.fstype != "rootfs" {
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
	if err := moveRoot(newRootDir, submounts(infos, root)); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	env := append(os.Environ(), SwitchedRootEnv+"=1")
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

// submounts returns the mountpoints of the mounts directly on root, which
// move with the root (their own children move with them).
func submounts(infos []mountInfo, root mountInfo) []string {
	var out []string
	for _, m := range infos {
		if m.parent == root.id && m.id != root.id && m.mountpoint != "/" {
			out = append(out, m.mountpoint)
		}
	}
	return out
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

// moveRoot makes a tmpfs at newRoot (a directory of "/") the new "/" with a
// copy of the old root's files and the given mounts moved over, deleting the
// old root's files on the way, and chroots into it. It leaves the current
// directory at the new "/".
//
// Everything is copied before anything is deleted, at the cost of holding the
// files twice for a moment: a failed copy leaves the initramfs whole, and the
// agent can still report the failure. Past the copy there is no way back.
func moveRoot(newRoot string, mounts []string) error {
	var st unix.Stat_t
	if err := unix.Lstat("/", &st); err != nil {
		return fmt.Errorf("stat /: %w", err)
	}
	oldDev := st.Dev

	if err := os.Mkdir(newRoot, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if err := unix.Mount("tmpfs", newRoot, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", newRoot, err)
	}
	c := copier{dev: oldDev, links: make(map[uint64]string)}
	if err := c.copyDir("/", newRoot); err != nil {
		unix.Unmount(newRoot, unix.MNT_DETACH)
		unix.Rmdir(newRoot)
		return err
	}

	// Mounts are on other devices: the deletion leaves them alone.
	deleteContents("/", oldDev)
	for _, mp := range mounts {
		dst := filepath.Join(newRoot, mp)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("move mount %s: %w", mp, err)
		}
		if err := unix.Mount(mp, dst, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move mount %s: %w", mp, err)
		}
		unix.Rmdir(mp) // now an empty directory of the old root
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

// copier copies a directory tree that lies on one device, skipping whatever
// is mounted inside it, and preserving modes, owners, symlinks, hard links
// and device nodes.
type copier struct {
	dev   uint64
	links map[uint64]string // inode -> first copy, for hard links
}

func (c *copier) copyDir(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		s, d := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(s, &st); err != nil {
			return fmt.Errorf("stat %s: %w", s, err)
		}
		if st.Dev != c.dev {
			continue // a mountpoint, or the new root itself
		}
		if err := c.copyEntry(s, d, &st); err != nil {
			return fmt.Errorf("copy %s: %w", s, err)
		}
	}
	return nil
}

func (c *copier) copyEntry(src, dst string, st *unix.Stat_t) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if err := unix.Mkdir(dst, 0o700); err != nil {
			return err
		}
		if err := c.copyDir(src, dst); err != nil {
			return err
		}
		// Chmod after filling it, in case the mode forbids writing.
		return chownChmod(dst, st)
	case unix.S_IFLNK:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := unix.Symlink(target, dst); err != nil {
			return err
		}
		return unix.Lchown(dst, int(st.Uid), int(st.Gid))
	case unix.S_IFREG:
		if uint64(st.Nlink) > 1 {
			if first, ok := c.links[st.Ino]; ok {
				return unix.Link(first, dst)
			}
			c.links[st.Ino] = dst
		}
		return copyFile(src, dst, st)
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO:
		if err := unix.Mknod(dst, st.Mode, int(st.Rdev)); err != nil {
			return err
		}
		return chownChmod(dst, st)
	default:
		return nil // sockets mean nothing in a copy
	}
}

func copyFile(src, dst string, st *unix.Stat_t) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	// Chown before chmod: chown clears the set-user-ID bit.
	if err := out.Chown(int(st.Uid), int(st.Gid)); err != nil {
		out.Close()
		return err
	}
	if err := unix.Fchmod(int(out.Fd()), st.Mode&0o7777); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func chownChmod(path string, st *unix.Stat_t) error {
	if err := unix.Lchown(path, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	return unix.Chmod(path, st.Mode&0o7777)
}

// deleteContents removes everything below dir that lies on device dev,
// without crossing into mounts, to free the initramfs' memory (rootfs pages
// are never reclaimed otherwise). Like busybox switch_root, it ignores
// errors: whatever it cannot remove only costs memory.
func deleteContents(dir string, dev uint64) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil || st.Dev != dev {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			deleteContents(p, dev)
			unix.Rmdir(p)
			continue
		}
		unix.Unlink(p)
	}
}
