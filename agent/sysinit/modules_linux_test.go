package sysinit

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A modules.dep shaped like Debian's: dependents listed before their
// dependencies, a chain (ext4 -> jbd2 -> crc16), diamonds (virtio_blk and
// virtio_pci both reach virtio_ring through virtio), a dependency with no line
// of its own (failover), and every compression.
const sampleModulesDep = `kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz kernel/lib/crc16.ko.xz
kernel/drivers/block/virtio_blk.ko.gz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko.zst: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko

kernel/fs/jbd2/jbd2.ko.xz: kernel/lib/crc16.ko.xz
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/fs/9p/9p-fs.ko:
`

func writeModulesDep(t *testing.T, content string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// depsOf reads the direct dependencies from the sample, by module name.
func depsOf(content string) map[string][]string {
	deps := make(map[string][]string)
	for _, line := range strings.Split(content, "\n") {
		path, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		for _, d := range strings.Fields(rest) {
			deps[moduleName(path)] = append(deps[moduleName(path)], moduleName(d))
		}
	}
	return deps
}

func TestPlanOrder(t *testing.T) {
	dir := writeModulesDep(t, sampleModulesDep)
	mods, err := plan(dir)
	if err != nil {
		t.Fatal(err)
	}
	pos := make(map[string]int)
	for i, m := range mods {
		if _, dup := pos[m.name]; dup {
			t.Errorf("module %s planned twice", m.name)
		}
		pos[m.name] = i
	}
	want := []string{"ext4", "jbd2", "mbcache", "crc16", "virtio_blk", "virtio", "virtio_ring",
		"virtio_pci", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_net", "net_failover",
		"failover", "9p_fs"}
	if len(mods) != len(want) {
		t.Errorf("planned %d modules; want %d: %v", len(mods), len(want), mods)
	}
	for _, name := range want {
		if _, ok := pos[name]; !ok {
			t.Errorf("module %s not planned", name)
		}
	}
	for mod, deps := range depsOf(sampleModulesDep) {
		for _, d := range deps {
			if pos[d] >= pos[mod] {
				t.Errorf("%s (at %d) planned after its dependent %s (at %d)", d, pos[d], mod, pos[mod])
			}
		}
	}
	// Transitive dependencies too: crc16 before ext4 via jbd2.
	if pos["virtio_ring"] > pos["virtio_pci_legacy_dev"] || pos["crc16"] > pos["jbd2"] {
		t.Errorf("transitive order wrong: %v", pos)
	}
	// Paths are kept relative, and the names are the kernel's.
	if m := mods[pos["9p_fs"]]; m.path != "kernel/fs/9p/9p-fs.ko" {
		t.Errorf("9p_fs path = %q", m.path)
	}
	if m := mods[pos["failover"]]; m.path != "kernel/net/core/failover.ko" || len(m.deps) != 0 {
		t.Errorf("failover (no line of its own) = %+v", m)
	}
}

func TestPlanErrors(t *testing.T) {
	for _, tc := range []struct {
		name, content, want string
	}{
		{"cycle", "a.ko: b.ko\nb.ko: c.ko.xz\nc.ko.xz: a.ko\n", "cycle: a -> b -> c -> a"},
		{"cycle below", "top.ko: a.ko\na.ko: b.ko\nb.ko: a.ko\n", "cycle: a -> b -> a"},
		{"self", "a.ko: a.ko\n", "cycle: a -> a"},
		{"no colon", "a.ko b.ko\n", "malformed line"},
		{"twice", "a.ko:\na.ko:\n", "listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := plan(writeModulesDep(t, tc.content))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("plan error = %v; want one containing %q", err, tc.want)
			}
		})
	}
	_, err := plan(t.TempDir())
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("plan of a dir without modules.dep: %v; want ErrNotExist", err)
	}
}

type loadCall struct {
	path, params string
	flags        int
}

func TestLoadModules(t *testing.T) {
	ctx := context.Background()
	dir := writeModulesDep(t, sampleModulesDep)
	cmdline := ParseCmdline(`quiet virtio-pci.force_legacy=1 virtio_pci.msg="a b" ext4.x=1 ext4x.y=2`)

	var calls []loadCall
	load := func(path, params string, flags int) error {
		calls = append(calls, loadCall{path, params, flags})
		switch moduleName(path) {
		case "crc16":
			return unix.EEXIST // built in
		case "virtio_ring":
			return unix.ENOEXEC
		}
		return nil
	}
	loaded, err := loadModules(ctx, dir, cmdline, load)

	// virtio_ring failed: everything that needs it is skipped, the rest loads.
	wantLoaded := []string{"ext4", "jbd2", "mbcache", "virtio_pci_modern_dev", "net_failover", "failover", "9p_fs"}
	mods, _ := plan(dir)
	var order []string
	for _, m := range mods {
		for _, w := range wantLoaded {
			if m.name == w {
				order = append(order, w)
			}
		}
	}
	if !reflect.DeepEqual(loaded, order) {
		t.Errorf("loaded %v; want %v", loaded, order)
	}
	for _, want := range []string{
		"load module virtio_ring",
		"module virtio: not loaded: dependency virtio_ring failed",
		"module virtio_blk: not loaded",
		"module virtio_pci: not loaded",
		"module virtio_pci_legacy_dev: not loaded",
		"module virtio_net: not loaded",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not contain %q", err, want)
		}
	}
	if !errors.Is(err, unix.ENOEXEC) {
		t.Errorf("error %v does not wrap the load error", err)
	}
	if strings.Contains(err.Error(), "crc16") || strings.Contains(err.Error(), "ext4") {
		t.Errorf("error %v names a module that is present", err)
	}

	byName := make(map[string]loadCall)
	for _, c := range calls {
		if _, dup := byName[moduleName(c.path)]; dup {
			t.Errorf("module %s loaded twice", c.path)
		}
		byName[moduleName(c.path)] = c
	}
	for name, want := range map[string]loadCall{
		"ext4":                  {filepath.Join(dir, "kernel/fs/ext4/ext4.ko.xz"), "x=1", unix.MODULE_INIT_COMPRESSED_FILE},
		"crc16":                 {filepath.Join(dir, "kernel/lib/crc16.ko.xz"), "", unix.MODULE_INIT_COMPRESSED_FILE},
		"virtio_pci_modern_dev": {filepath.Join(dir, "kernel/drivers/virtio/virtio_pci_modern_dev.ko"), "", 0},
		"failover":              {filepath.Join(dir, "kernel/net/core/failover.ko"), "", 0},
	} {
		if got := byName[name]; got != want {
			t.Errorf("load of %s = %+v; want %+v", name, got, want)
		}
	}
	for _, skipped := range []string{"virtio", "virtio_blk", "virtio_pci"} {
		if _, ok := byName[skipped]; ok {
			t.Errorf("%s was loaded although its dependency failed", skipped)
		}
	}
}

func TestLoadModulesFlagsAndParams(t *testing.T) {
	dir := writeModulesDep(t, "a/virtio-pci.ko.zst:\nb/blk.ko.gz:\nc/plain.ko:\n/abs/x.ko:\n")
	var calls []loadCall
	loaded, err := loadModules(context.Background(), dir,
		ParseCmdline(`virtio_pci.force_legacy=1 virtio-pci.msg="a b" plain.p`),
		func(path, params string, flags int) error {
			calls = append(calls, loadCall{path, params, flags})
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	want := []loadCall{
		{filepath.Join(dir, "a/virtio-pci.ko.zst"), `force_legacy=1 msg="a b"`, unix.MODULE_INIT_COMPRESSED_FILE},
		{filepath.Join(dir, "b/blk.ko.gz"), "", unix.MODULE_INIT_COMPRESSED_FILE},
		{filepath.Join(dir, "c/plain.ko"), "p", 0},
		{"/abs/x.ko", "", 0},
	}
	if !reflect.DeepEqual(calls, want) {
		t.Errorf("calls\n%+v\nwant\n%+v", calls, want)
	}
	if !reflect.DeepEqual(loaded, []string{"virtio_pci", "blk", "plain", "x"}) {
		t.Errorf("loaded %v", loaded)
	}
}

func TestLoadModulesNothingToDo(t *testing.T) {
	// No modules.dep: a kernel with everything built in. This goes through the
	// real finit_module path, which must not be reached.
	loaded, err := LoadModules(context.Background(), t.TempDir(), Cmdline{})
	if err != nil || loaded != nil {
		t.Errorf("LoadModules without modules.dep = %v, %v; want nil, nil", loaded, err)
	}

	// A cancelled context stops before the first module.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	_, err = loadModules(ctx, writeModulesDep(t, "a.ko:\n"), Cmdline{}, func(string, string, int) error {
		called = true
		return nil
	})
	if !errors.Is(err, context.Canceled) || called {
		t.Errorf("cancelled: err %v, loader called %v", err, called)
	}

	// A broken modules.dep is an error, not "no modules".
	if _, err := LoadModules(context.Background(), writeModulesDep(t, "a.ko: b.ko\nb.ko: a.ko\n"), Cmdline{}); err == nil {
		t.Error("LoadModules with a cycle succeeded")
	}
}

func TestModulesDir(t *testing.T) {
	dir, err := ModulesDir()
	if err != nil {
		t.Fatal(err)
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	if want := "/lib/modules/" + unix.ByteSliceToString(u.Release[:]); dir != want {
		t.Errorf("ModulesDir = %q; want %q", dir, want)
	}
}

// TestLoadModuleGroups: an optional group (modules.optional) loads only when the command line
// asks for it, with the dependencies only it needs; a dependency it shares with a boot module
// loads anyway; a group module the image lacks (built in) is no error.
func TestLoadModuleGroups(t *testing.T) {
	dir := writeModulesDep(t, `kernel/usb/core.ko:
kernel/usb/xhci.ko: kernel/usb/core.ko kernel/lib/crc.ko
kernel/scsi/sd_mod.ko: kernel/scsi/scsi_mod.ko
kernel/scsi/scsi_mod.ko:
kernel/lib/crc.ko:
kernel/fs/ext4.ko: kernel/lib/crc.ko
kernel/net/bridge.ko: kernel/net/stp.ko
kernel/net/stp.ko:
`)
	if err := os.WriteFile(filepath.Join(dir, "modules.optional"), []byte("usb: xhci sd_mod builtin_usb\nbridge: bridge\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for cmd, want := range map[string][]string{
		"quiet":                   {"crc", "ext4"},
		"vz.modules=usb":          {"core", "crc", "xhci", "scsi_mod", "sd_mod", "ext4"},
		"vz.modules=bridge,usb":   {"core", "crc", "xhci", "scsi_mod", "sd_mod", "ext4", "stp", "bridge"},
		"vz.modules=bridge,other": {"crc", "ext4", "stp", "bridge"},
	} {
		var got []string
		_, err := loadModules(context.Background(), dir, ParseCmdline(cmd), func(path, _ string, _ int) error {
			got = append(got, moduleName(path))
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: loaded %v, want %v", cmd, got, want)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.optional"), []byte("usb\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadModules(context.Background(), dir, Cmdline{}, func(string, string, int) error { return nil }); err == nil {
		t.Error("a malformed modules.optional was accepted")
	}
}
