package sysinit

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSwitchRootNoop calls the real SwitchRoot in the test process, whose root
// is not an initramfs: it must return nil and change nothing.
func TestSwitchRootNoop(t *testing.T) {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		t.Fatal(err)
	}
	infos, err := readMountinfo()
	if err != nil {
		t.Fatal(err)
	}
	if root, _ := rootMount(infos); root.fstype == "rootfs" {
		t.Skip("SKIPPED: the test runs from an initramfs; SwitchRoot would really switch")
	}
	wd, _ := os.Getwd()

	t.Setenv(SwitchedRootEnv, "1")
	if err := SwitchRoot(); err != nil {
		t.Fatalf("SwitchRoot: %v", err)
	}
	if _, ok := os.LookupEnv(SwitchedRootEnv); ok {
		t.Errorf("SwitchRoot left %s in the environment", SwitchedRootEnv)
	}
	if err := SwitchRoot(); err != nil {
		t.Fatalf("SwitchRoot without the marker: %v", err)
	}

	if _, err := os.Lstat(newRootDir); !os.IsNotExist(err) {
		t.Errorf("%s exists after SwitchRoot: %v", newRootDir, err)
	}
	// Other tests may mount elsewhere meanwhile: look at what SwitchRoot
	// would have touched.
	after, _ := readMountinfo()
	before, _ := rootMount(infos)
	if root, _ := rootMount(after); root.id != before.id {
		t.Errorf("the root mount changed across SwitchRoot: %+v -> %+v", before, root)
	}
	for _, m := range after {
		if m.mountpoint == newRootDir {
			t.Errorf("SwitchRoot left a mount at %s", newRootDir)
		}
	}
	if now, _ := os.Getwd(); now != wd {
		t.Errorf("working directory moved from %s to %s", wd, now)
	}
}

// TestMoveRoot runs the switch itself in a child with a private mount
// namespace: a tmpfs stands in for the initramfs and is made the child's root
// with chroot, with a mount on it and procfs, as after an early MountBase.
func TestBindRoot(t *testing.T) {
	dir := t.TempDir()
	expectChildOK(t, "bindroot", dir, &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS})
	if leaked := mountsUnder(t, dir); len(leaked) > 0 {
		t.Errorf("child mounts leaked into the test's namespace: %+v", leaked)
	}
}

// oldRootFiles is the fake initramfs: path -> mode, content or link target.
type fakeFile struct {
	mode     uint32 // with the type bits
	uid, gid int
	content  string // file content, link target
	rdev     int
}

var oldRootFiles = map[string]fakeFile{
	"init":             {mode: unix.S_IFREG | 0o755, content: "agent"},
	"bin":              {mode: unix.S_IFDIR | 0o755},
	"bin/runc":         {mode: unix.S_IFREG | 0o755, content: "runc"},
	"etc":              {mode: unix.S_IFDIR | 0o755},
	"etc/conf":         {mode: unix.S_IFREG | 0o640, uid: 1000, gid: 1001, content: "x=1"},
	"suid":             {mode: unix.S_IFREG | 0o4755, content: "s"},
	"ro":               {mode: unix.S_IFDIR | 0o555, uid: 7, gid: 8},
	"ro/file":          {mode: unix.S_IFREG | 0o444, content: "in a read-only dir"},
	"sticky":           {mode: unix.S_IFDIR | 0o1777},
	"link":             {mode: unix.S_IFLNK | 0o777, content: "bin/runc"},
	"dangling":         {mode: unix.S_IFLNK | 0o777, content: "/nowhere"},
	"dev":              {mode: unix.S_IFDIR | 0o755},
	"dev/console":      {mode: unix.S_IFCHR | 0o600, rdev: int(unix.Mkdev(5, 1))},
	"fifo":             {mode: unix.S_IFIFO | 0o644},
	"lib/modules/v/m":  {mode: unix.S_IFREG | 0o644, content: "module"},
	"lib":              {mode: unix.S_IFDIR | 0o755},
	"lib/modules":      {mode: unix.S_IFDIR | 0o755},
	"lib/modules/v":    {mode: unix.S_IFDIR | 0o755},
	"lib/modules/v/m2": {mode: unix.S_IFREG | 0o644, content: "hardlink of m"}, // made a link below
}

func childBindRoot(dir string) error {
	if err := isolateMounts(); err != nil {
		return err
	}
	old := filepath.Join(dir, "old")
	if err := os.Mkdir(old, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("initramfs", old, "tmpfs", 0, "mode=0755"); err != nil {
		return err
	}
	if err := makeFakeRoot(old); err != nil {
		return err
	}
	// A mount on the old root, and procfs: both must be there in the new root.
	for _, p := range []string{"mnt", "proc"} {
		if err := os.Mkdir(filepath.Join(old, p), 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("disk", filepath.Join(old, "mnt"), "tmpfs", 0, ""); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(old, "mnt/x"), []byte("on a mount"), 0o644); err != nil {
		return err
	}
	if err := unix.Mount("proc", filepath.Join(old, "proc"), "proc", 0, ""); err != nil {
		return err
	}
	if err := unix.Chdir(old); err != nil {
		return err
	}
	if err := unix.Chroot("."); err != nil {
		return err
	}
	infos, err := readMountinfo()
	if err != nil {
		return err
	}
	before, _ := rootMount(infos)

	if err := bindRoot(newRootDir); err != nil {
		return fmt.Errorf("bindRoot: %w", err)
	}

	// "/" is a new mount of the same files, whose parent is the old root.
	infos, err = readMountinfo()
	if err != nil {
		return err
	}
	after, _ := rootMount(infos)
	if after.id == before.id || after.parent != before.id {
		return fmt.Errorf("root mount %+v after the bind; before %+v", after, before)
	}
	if wd, _ := os.Getwd(); wd != "/" {
		return fmt.Errorf("working directory %q; want /", wd)
	}
	if err := checkFakeRoot("/"); err != nil {
		return err
	}
	if b, err := os.ReadFile("/mnt/x"); err != nil || string(b) != "on a mount" {
		return fmt.Errorf("/mnt/x after the bind: %q, %v", b, err)
	}
	if _, err := os.Stat("/proc/self/mountinfo"); err != nil {
		return fmt.Errorf("procfs after the bind: %w", err)
	}
	// What runc does next: pivot_root into a container's root.
	if err := os.Mkdir("/ctr", 0o755); err != nil {
		return err
	}
	if err := unix.Mount("ctr", "/ctr", "tmpfs", 0, ""); err != nil {
		return err
	}
	if err := os.Mkdir("/ctr/old", 0o755); err != nil {
		return err
	}
	if err := unix.PivotRoot("/ctr", "/ctr/old"); err != nil {
		return fmt.Errorf("pivot_root from the bound root: %w", err)
	}
	return nil
}

func makeFakeRoot(root string) error {
	paths := make([]string, 0, len(oldRootFiles))
	for p := range oldRootFiles {
		paths = append(paths, p)
	}
	sort.Strings(paths) // parents first
	for _, p := range paths {
		f := oldRootFiles[p]
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		var err error
		switch f.mode & unix.S_IFMT {
		case unix.S_IFDIR:
			err = os.Mkdir(full, 0o755)
		case unix.S_IFLNK:
			err = os.Symlink(f.content, full)
		case unix.S_IFREG:
			if p == "lib/modules/v/m2" {
				err = os.Link(filepath.Join(root, "lib/modules/v/m"), full)
			} else {
				err = os.WriteFile(full, []byte(f.content), 0o600)
			}
		default:
			err = unix.Mknod(full, f.mode, f.rdev)
		}
		if err != nil {
			return err
		}
		if f.mode&unix.S_IFMT == unix.S_IFLNK || p == "lib/modules/v/m2" {
			continue
		}
		if err := unix.Lchown(full, f.uid, f.gid); err != nil {
			return err
		}
		if err := unix.Chmod(full, f.mode&0o7777); err != nil {
			return err
		}
	}
	// ro/ is read-only before ro/file is made: root may, and so the copy
	// must too.
	return nil
}

func checkFakeRoot(root string) error {
	for p, want := range oldRootFiles {
		full := filepath.Join(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(full, &st); err != nil {
			return fmt.Errorf("after the move: %w", err)
		}
		if p == "lib/modules/v/m2" {
			want = oldRootFiles["lib/modules/v/m"]
		}
		if st.Mode != want.mode || int(st.Uid) != want.uid || int(st.Gid) != want.gid {
			return fmt.Errorf("%s: mode %o uid %d gid %d; want %o %d %d", p, st.Mode, st.Uid, st.Gid, want.mode, want.uid, want.gid)
		}
		switch want.mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(full)
			if err != nil || string(b) != want.content {
				return fmt.Errorf("%s: content %q, %v; want %q", p, b, err, want.content)
			}
		case unix.S_IFLNK:
			if target, _ := os.Readlink(full); target != want.content {
				return fmt.Errorf("%s: link to %q; want %q", p, target, want.content)
			}
		case unix.S_IFCHR:
			if int(st.Rdev) != want.rdev {
				return fmt.Errorf("%s: device %#x; want %#x", p, st.Rdev, want.rdev)
			}
		}
	}
	var m, m2 unix.Stat_t
	unix.Stat(filepath.Join(root, "lib/modules/v/m"), &m)
	unix.Stat(filepath.Join(root, "lib/modules/v/m2"), &m2)
	if m.Ino != m2.Ino || m.Nlink != 2 {
		return fmt.Errorf("hard link not kept: inodes %d, %d, %d links", m.Ino, m2.Ino, m.Nlink)
	}
	return nil
}
