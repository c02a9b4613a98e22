package shim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
)

func TestLoadOptions(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "vz.toml")
	os.WriteFile(cfg, []byte("kernel = \"/k\"\ninitrd = \"/i\"\naccel = \"tcg\"\ncpus = 3\nmemory_mib = 300\nnetwork = false\nkernel_args = [\"a=1\"]\n"), 0o644)

	a, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: cfg})
	if err != nil {
		t.Fatal(err)
	}
	o, err := loadOptions(dir, a)
	if err != nil {
		t.Fatal(err)
	}
	if o.Kernel != "/k" || o.Initrd != "/i" || o.Accel != "tcg" || o.CPUs != 3 || o.MemoryMiB != 300 || o.Network != "none" || o.KernelArgs[0] != "a=1" || o.BootTimeout != 120 {
		t.Errorf("options %+v", o)
	}

	// Saved at bootstrap, with a body instead of a path.
	if err := saveBootstrapOptions(dir, &runtimeoptions.Options{ConfigBody: []byte("kernel = \"/k2\"\ninitrd = \"/i2\"\n")}); err != nil {
		t.Fatal(err)
	}
	o, err = loadOptions(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.Kernel != "/k2" || o.CPUs != 2 || o.MemoryMiB != 512 || o.Network != defaultNetwork {
		t.Errorf("defaults: %+v", o)
	}

	for name, body := range map[string]string{
		"unknown key": "kernal = \"/k\"\n",
		"bad toml":    "kernel = ",
		"bad arch":    "arch = \"riscv64\"\nkernel=\"/k\"\ninitrd=\"/i\"\n",
		"bad caching": "disk_caching = \"writeback\"\nkernel=\"/k\"\ninitrd=\"/i\"\n",
		"bad sync":    "disk_sync = \"always\"\nkernel=\"/k\"\ninitrd=\"/i\"\n",
		"bad tb size": "tcg_tb_size_mib = -1\nkernel=\"/k\"\ninitrd=\"/i\"\n",
		"two boots":   "kernel=\"/k\"\ninitrd=\"/i\"\nrootfs=\"/r\"\n",
	} {
		a, _ := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte(body)})
		if _, err := loadOptions(t.TempDir(), a); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
}

func TestGuestBootImage(t *testing.T) {
	dir := t.TempDir()
	if initrd, rootfs := guestBootImage(dir); initrd != filepath.Join(dir, "initrd") || rootfs != "" {
		t.Errorf("without a rootfs: initrd %q, rootfs %q; want the initrd", initrd, rootfs)
	}
	if err := os.WriteFile(filepath.Join(dir, "rootfs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if initrd, rootfs := guestBootImage(dir); initrd != "" || rootfs != filepath.Join(dir, "rootfs") {
		t.Errorf("with a rootfs: initrd %q, rootfs %q; want the rootfs", initrd, rootfs)
	}
	if got := (&Options{RootFS: "/r"}).bootImage(); got != "/r" {
		t.Errorf("boot image %q, want the rootfs", got)
	}
}

func TestDefaultGuestDirMissing(t *testing.T) {
	// The test binary has no guest next to it: the error says what to do.
	if _, err := defaultGuestDir("arm64"); !errdefs.IsNotFound(err) {
		t.Errorf("got %v, want not found", err)
	}
}

// The system-wide file gives every key a client does not pass; the task's options override it
// key by key.
func TestSystemOptions(t *testing.T) {
	dir := t.TempDir()
	sys := filepath.Join(dir, "runtime.toml")
	os.WriteFile(sys, []byte("kernel = \"/sys-k\"\ninitrd = \"/sys-i\"\ncpus = 4\nnetwork = \"user\"\naccel = \"kvm\"\n"), 0o644)
	t.Setenv(SystemConfigEnv, sys)

	o, err := loadOptions(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.Kernel != "/sys-k" || o.CPUs != 4 || o.Network != networkUser || o.Accel != "kvm" {
		t.Errorf("from the system file: %+v", o)
	}
	a, _ := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte("cpus = 1\nnetwork = \"none\"\n")})
	if o, err = loadOptions(t.TempDir(), a); err != nil {
		t.Fatal(err)
	}
	if o.Kernel != "/sys-k" || o.CPUs != 1 || o.Network != networkNone {
		t.Errorf("task options over the system file: %+v", o)
	}

	// The boot image is one setting: the task's rootfs replaces the system's initrd.
	a, _ = typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte("rootfs = \"/r\"\n")})
	if o, err = loadOptions(t.TempDir(), a); err != nil {
		t.Fatal(err)
	}
	if o.Kernel != "/sys-k" || o.Initrd != "" || o.RootFS != "/r" {
		t.Errorf("task rootfs over the system initrd: kernel %q, initrd %q, rootfs %q", o.Kernel, o.Initrd, o.RootFS)
	}
	if o, err = loadOptions(t.TempDir(), nil); err != nil || o.Initrd != "/sys-i" || o.RootFS != "" {
		t.Errorf("the system's initrd alone: initrd %q, rootfs %q (%v)", o.Initrd, o.RootFS, err)
	}

	os.WriteFile(sys, []byte("network = \"bridge\"\n"), 0o644)
	if _, err := loadOptions(t.TempDir(), nil); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), sys) {
		t.Errorf("bad system file: %v, want invalid argument naming %s", err, sys)
	}
	t.Setenv(SystemConfigEnv, filepath.Join(dir, "missing.toml"))
	a, _ = typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte("kernel = \"/k\"\ninitrd = \"/i\"\n")})
	if o, err = loadOptions(t.TempDir(), a); err != nil || o.Accel != "tcg" || o.Network != defaultNetwork {
		t.Errorf("no system file: %v %+v (accel defaults to tcg)", err, o)
	}
}
