package shim

import (
	"os"
	"path/filepath"
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
	} {
		a, _ := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte(body)})
		if _, err := loadOptions(t.TempDir(), a); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
}

func TestDefaultGuestDirMissing(t *testing.T) {
	// The test binary has no guest next to it: the error says what to do.
	if _, err := defaultGuestDir("arm64"); !errdefs.IsNotFound(err) {
		t.Errorf("got %v, want not found", err)
	}
}
