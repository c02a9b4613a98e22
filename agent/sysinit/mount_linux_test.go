package sysinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestBaseMountsTable(t *testing.T) {
	want := map[string]string{
		"/proc": "proc", "/sys": "sysfs", "/dev": "devtmpfs", "/dev/pts": "devpts",
		"/dev/shm": "tmpfs", "/dev/mqueue": "mqueue", "/sys/fs/cgroup": "cgroup2",
		"/run": "tmpfs", "/tmp": "tmpfs",
	}
	specs := baseMounts()
	got := make(map[string]string)
	for i, s := range specs {
		got[s.target] = s.fstype
		// A mount must come after the one it lives in.
		for _, later := range specs[i+1:] {
			if isUnder(s.target, later.target) {
				t.Errorf("%s is mounted before %s, which contains it", s.target, later.target)
			}
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("base mounts %v; want %v", got, want)
	}
	for _, s := range specs {
		if s.target == "/dev/pts" && !strings.Contains(s.data, "ptmxmode=0666") {
			t.Errorf("devpts options %q lack ptmxmode=0666", s.data)
		}
	}
}

// TestMountBase mounts the base filesystems twice in a child with its own
// mount, cgroup, IPC and network namespaces, chrooted into an empty directory
// as PID 1 is at boot: no /proc to read mountinfo from until it is mounted.
//
// The child uses a tmpfs where MountBase mounts devtmpfs: there is one
// devtmpfs in the kernel, shared with the host's /dev, and mounting it would
// let the child create directories (and apply mount options) in the host's
// /dev. For the same reason the child does not enable cgroup controllers, which
// are tested on fake files below; the cgroup namespace keeps the cgroup2 mount
// from resetting the host's cgroup2 mount flags.
func TestMountBase(t *testing.T) {
	dir := t.TempDir()
	expectChildOK(t, "mountbase", dir, &syscall.SysProcAttr{
		Unshareflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWCGROUP | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET,
	})
	if leaked := mountsUnder(t, dir); len(leaked) > 0 {
		t.Errorf("child mounts leaked into the test's namespace: %+v", leaked)
	}
}

// testBaseMounts is baseMounts with a tmpfs instead of the devtmpfs.
func testBaseMounts() []mountSpec {
	specs := baseMounts()
	for i := range specs {
		if specs[i].fstype == "devtmpfs" {
			specs[i].source, specs[i].fstype = "testdev", "tmpfs"
		}
	}
	return specs
}

// mqueueMagic is MQUEUE_MAGIC from linux/magic.h, which x/sys lacks.
const mqueueMagic = 0x19800202

func childMountBase(dir string) error {
	if err := isolateMounts(); err != nil {
		return err
	}
	if err := unix.Chroot(dir); err != nil {
		return err
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if _, err := readMountinfo(); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("mountinfo readable before proc is mounted: %v", err)
	}
	const root = "/"
	specs := testBaseMounts()
	for run := 1; run <= 2; run++ {
		if err := mountAll(root, specs); err != nil {
			return fmt.Errorf("run %d: %w", run, err)
		}
		if err := linkPtmx(root); err != nil {
			return fmt.Errorf("run %d: %w", run, err)
		}
	}

	infos, err := readMountinfo()
	if err != nil {
		return err
	}
	for _, s := range specs {
		target := filepath.Join(root, s.target)
		var types []string
		for _, m := range infos {
			if m.mountpoint == target {
				types = append(types, m.fstype)
			}
		}
		if len(types) != 1 || types[0] != s.fstype {
			return fmt.Errorf("mounts at %s after two runs: %q; want one %s", target, types, s.fstype)
		}
	}

	// Each is the filesystem it claims to be.
	for path, magic := range map[string]int64{
		"proc": unix.PROC_SUPER_MAGIC, "sys": unix.SYSFS_MAGIC, "dev/pts": unix.DEVPTS_SUPER_MAGIC,
		"dev/mqueue": mqueueMagic, "sys/fs/cgroup": unix.CGROUP2_SUPER_MAGIC, "run": unix.TMPFS_MAGIC,
		"tmp": unix.TMPFS_MAGIC, "dev/shm": unix.TMPFS_MAGIC,
	} {
		var st unix.Statfs_t
		if err := unix.Statfs(filepath.Join(root, path), &st); err != nil {
			return err
		}
		if st.Type != magic {
			return fmt.Errorf("%s: filesystem magic %#x; want %#x", path, st.Type, magic)
		}
	}
	for path, want := range map[string]os.FileMode{"tmp": os.ModeSticky | 0o777, "dev/shm": os.ModeSticky | 0o777, "run": 0o755} {
		fi, err := os.Stat(filepath.Join(root, path))
		if err != nil {
			return err
		}
		if got := fi.Mode() & (os.ModePerm | os.ModeSticky); got != want {
			return fmt.Errorf("%s: mode %v; want %v", path, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "sys/fs/cgroup/cgroup.controllers")); err != nil {
		return fmt.Errorf("cgroup2 mount: %w", err)
	}
	if err := checkPtmx(root); err != nil {
		return err
	}

	// An existing /dev/ptmx node (as devtmpfs has) is bind-mounted over.
	root2 := filepath.Join(root, "tmp/other")
	if err := os.MkdirAll(filepath.Join(root2, "dev"), 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", filepath.Join(root2, "dev"), "tmpfs", 0, ""); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root2, "dev/ptmx"), nil, 0o600); err != nil {
		return err
	}
	var devpts []mountSpec
	for _, s := range specs {
		if s.fstype == "devpts" {
			devpts = append(devpts, s)
		}
	}
	if err := mountAll(root2, devpts); err != nil {
		return err
	}
	for run := 1; run <= 2; run++ {
		if err := linkPtmx(root2); err != nil {
			return fmt.Errorf("bind run %d: %w", run, err)
		}
	}
	if err := checkPtmx(root2); err != nil {
		return err
	}
	infos, _ = readMountinfo()
	n := 0
	for _, m := range infos {
		if m.mountpoint == filepath.Join(root2, "dev/ptmx") && m.fstype == "devpts" {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("%d devpts mounts on dev/ptmx after two runs; want 1", n)
	}
	return nil
}

// checkPtmx checks that root/dev/ptmx opens the new devpts instance.
func checkPtmx(root string) error {
	var ptmx, inst unix.Stat_t
	if err := unix.Stat(filepath.Join(root, "dev/ptmx"), &ptmx); err != nil {
		return err
	}
	if err := unix.Stat(filepath.Join(root, "dev/pts/ptmx"), &inst); err != nil {
		return err
	}
	if ptmx.Dev != inst.Dev || ptmx.Ino != inst.Ino {
		return fmt.Errorf("dev/ptmx is not dev/pts/ptmx")
	}
	if inst.Mode&0o777 != 0o666 {
		return fmt.Errorf("dev/pts/ptmx mode %o; want 0666", inst.Mode&0o777)
	}
	// Allocating a pty through it creates a node in this instance only.
	f, err := os.OpenFile(filepath.Join(root, "dev/ptmx"), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("open dev/ptmx: %w", err)
	}
	defer f.Close()
	n, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCGPTN)
	if err != nil {
		return fmt.Errorf("TIOCGPTN: %w", err)
	}
	if _, err := os.Stat(filepath.Join(root, "dev/pts", fmt.Sprint(n))); err != nil {
		return fmt.Errorf("pty %d not in the new devpts instance: %w", n, err)
	}
	return nil
}

func TestEnableControllers(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("cgroup.controllers", "cpuset cpu io memory pids\n")
	write("cgroup.subtree_control", "cpu memory\n")
	if err := enableControllers(dir); err != nil {
		t.Fatal(err)
	}
	// A regular file just records the writes: one per controller not yet on.
	got, _ := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if want := "+cpuset\n+io\n+pids\n"; string(got) != want {
		t.Errorf("wrote %q; want %q", got, want)
	}

	write("cgroup.controllers", "")
	write("cgroup.subtree_control", "")
	if err := enableControllers(dir); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control")); len(got) != 0 {
		t.Errorf("wrote %q with no controllers available", got)
	}

	os.Remove(filepath.Join(dir, "cgroup.controllers"))
	if err := enableControllers(dir); err == nil || !strings.Contains(err.Error(), "cgroup.controllers") {
		t.Errorf("without cgroup.controllers: %v", err)
	}
}
