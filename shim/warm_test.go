package shim

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

func TestWarmUnfit(t *testing.T) {
	ok := vm.Config{Disks: make([]vm.Disk, 2), Shares: make([]vm.Share, 1), NICSlots: vm.TemplateNICSlots}
	if why := warmUnfit(ok); why != "" {
		t.Errorf("a task with 2 disks, a share and NICs: unfit: %s", why)
	}
	pod := vm.Config{DiskSlots: groupDiskSlots, DiskHotplugBus: vm.DiskBusVirtio, Disks: make([]vm.Disk, 1), Shares: make([]vm.Share, 1), NICSlots: vm.TemplateNICSlots}
	if why := warmUnfit(pod); why != "" {
		t.Errorf("a pod's sandbox: unfit: %s", why)
	}
	for name, cfg := range map[string]vm.Config{
		"usb group":  {DiskSlots: 8, DiskHotplugBus: vm.DiskBusUSB},
		"full group": {DiskSlots: 8, Disks: make([]vm.Disk, vm.TemplateSlots-minJoinSlots), Shares: make([]vm.Share, 1)},
		"too many":   {Disks: make([]vm.Disk, vm.TemplateSlots), Shares: make([]vm.Share, 1)},
		"many NICs":  {NICSlots: vm.TemplateNICSlots + 1},
	} {
		if warmUnfit(cfg) == "" {
			t.Errorf("%s: a template would serve it", name)
		}
	}
}

// TestTemplateConfig: a template has nothing of its task, and boots with
// static networking whatever the task's.
func TestTemplateConfig(t *testing.T) {
	cfg := vm.Config{
		ID: "task", Kernel: "k", RootDisk: "r", Arch: "amd64", CPUs: 2, MemoryMiB: 512, Accel: "tcg",
		KernelArgs: []string{"a=1", "vz.net=static"}, Disks: []vm.Disk{{ID: "d"}}, Shares: []vm.Share{{Tag: "s"}},
		NetNS: "/run/netns/x", NICSlots: 4, ConsoleLog: "/b/console.log", StateDir: "/b/vm",
	}
	tc := templateConfig(cfg)
	if tc.ID != "" || len(tc.Disks) != 0 || len(tc.Shares) != 0 || tc.NetNS != "" || tc.NICSlots != 0 || tc.StateDir != "" || tc.ConsoleLog != "" {
		t.Errorf("template has the task's things: %+v", tc)
	}
	if want := []string{"a=1", "vz.net=static"}; !slices.Equal(tc.KernelArgs, want) {
		t.Errorf("template kernel args %q, want %q", tc.KernelArgs, want)
	}
	cfg.KernelArgs = []string{"a=1"}
	if tc2 := templateConfig(cfg); !slices.Equal(tc2.KernelArgs, tc.KernelArgs) {
		t.Errorf("a task without a namespace gets another template: %q vs %q", tc2.KernelArgs, tc.KernelArgs)
	}
}

// TestWarmConfigOff: warm_start off, or a task a template cannot serve,
// gets its config back untouched.
func TestWarmConfigOff(t *testing.T) {
	off, on := false, true
	cfg := vm.Config{ID: "x", Network: true}
	if w, got := warmConfig(context.Background(), Options{WarmStart: &off}, cfg); w != nil || got.Restore != "" {
		t.Errorf("warm_start off: %+v, %+v", w, got)
	}
	cfg = vm.Config{ID: "x", NICSlots: vm.TemplateNICSlots + 1}
	if w, got := warmConfig(context.Background(), Options{WarmStart: &on}, cfg); w != nil || got.Restore != "" {
		t.Errorf("too many NICs: %+v, %+v", w, got)
	}
}

// TestTemplateKeyInputs: the key changes with every input that changes
// the saved guest.
func TestTemplateKeyInputs(t *testing.T) {
	if _, err := templateLayout("qemu", vm.Config{Arch: "amd64"}); err != nil {
		t.Skipf("SKIP: %v", err) // no QEMU: the layout names its binary
	}
	dir := t.TempDir()
	kernel, rootfs := filepath.Join(dir, "kernel"), filepath.Join(dir, "rootfs")
	os.WriteFile(kernel, []byte("k"), 0o600)
	os.WriteFile(rootfs, []byte("r"), 0o600)
	base := vm.Config{Kernel: kernel, RootDisk: rootfs, Arch: "amd64", CPUs: 2, MemoryMiB: 512, Accel: "tcg"}
	key := func(c vm.Config) string {
		k, err := templateKey("qemu", c)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k0 := key(base)
	if key(base) != k0 {
		t.Fatal("key not stable")
	}
	variants := map[string]func(c *vm.Config){
		"cpus":   func(c *vm.Config) { c.CPUs = 1 },
		"memory": func(c *vm.Config) { c.MemoryMiB = 640 },
		"args":   func(c *vm.Config) { c.KernelArgs = []string{"x"} },
		"tb":     func(c *vm.Config) { c.TCGTBSizeMiB = 64 },
	}
	for name, change := range variants {
		c := base
		change(&c)
		if key(c) == k0 {
			t.Errorf("%s: same key", name)
		}
	}
	os.WriteFile(rootfs, []byte("rebuilt"), 0o600)
	if key(base) == k0 {
		t.Error("a rebuilt root disk: same key")
	}
}
