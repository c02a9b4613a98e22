package vz

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// testHost has VZ's limits on an Apple silicon Mac.
var testHost = Host{Arch: "arm64", MinCPUs: 1, MaxCPUs: 10, MinMemory: 128 << 20, MaxMemory: 16 << 30}

// arm64Image is the start of an arm64 Image: the magic at offset 56.
func arm64Image() []byte {
	b := make([]byte, 64)
	copy(b[56:], "ARM\x64")
	return b
}

// fakeConfig is a valid config over fake kernel, initrd, disks and shares.
func fakeConfig(t *testing.T) vm.Config {
	t.Helper()
	dir := t.TempDir()
	files := map[string][]byte{"kernel": arm64Image(), "initrd": nil, "layer.img": nil, "rw.img": nil}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"share", "state"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return vm.Config{
		ID:         "task1",
		Kernel:     filepath.Join(dir, "kernel"),
		Initrd:     filepath.Join(dir, "initrd"),
		KernelArgs: []string{"vz.debug=1", "loglevel=7"},
		Arch:       "arm64",
		CPUs:       2,
		MemoryMiB:  512,
		Disks: []vm.Disk{
			{ID: "layer0", Path: filepath.Join(dir, "layer.img"), ReadOnly: true},
			{ID: "rw", Path: filepath.Join(dir, "rw.img")},
		},
		Shares:     []vm.Share{{Tag: "s0", Path: filepath.Join(dir, "share"), ReadOnly: true}, {Tag: "rootfs", Path: filepath.Join(dir, "share")}},
		Network:    true,
		ConsoleLog: filepath.Join(dir, "console.log"),
		StateDir:   filepath.Join(dir, "state"),
	}
}

func TestPlan(t *testing.T) {
	cfg := fakeConfig(t)
	p, err := NewPlan(cfg, testHost)
	if err != nil {
		t.Fatal(err)
	}
	if p.Kernel != cfg.Kernel || p.Initrd != cfg.Initrd || p.ConsoleLog != cfg.ConsoleLog || p.ID != "task1" {
		t.Errorf("paths: %+v", p)
	}
	if p.CPUs != 2 || p.MemoryBytes != 512<<20 {
		t.Errorf("size: %d cpus, %d bytes", p.CPUs, p.MemoryBytes)
	}
	if want := "console=hvc0 panic=-1 quiet vz.transport=vsock vz.debug=1 loglevel=7"; p.CommandLine != want {
		t.Errorf("command line %q, want %q", p.CommandLine, want)
	}
	wantDisks := []DiskPlan{
		{ID: "layer0", Path: cfg.Disks[0].Path, ReadOnly: true, Caching: CachingCached, Sync: SyncNone},
		{ID: "rw", Path: cfg.Disks[1].Path, Caching: CachingCached, Sync: SyncFsync},
	}
	if len(p.Disks) != len(wantDisks) {
		t.Fatalf("disks %+v", p.Disks)
	}
	for i := range wantDisks {
		if p.Disks[i] != wantDisks[i] {
			t.Errorf("disk %d: %+v, want %+v", i, p.Disks[i], wantDisks[i])
		}
	}
	wantShares := []SharePlan{
		{Tag: "s0", Path: cfg.Shares[0].Path, ReadOnly: true},
		{Tag: "rootfs", Path: cfg.Shares[1].Path},
	}
	if len(p.Shares) != 2 || p.Shares[0] != wantShares[0] || p.Shares[1] != wantShares[1] {
		t.Errorf("shares %+v, want %+v", p.Shares, wantShares)
	}
	if !p.Entropy {
		t.Error("no entropy device")
	}
	if len(p.MAC) != 6 || p.MAC[0]&0x02 == 0 || p.MAC[0]&0x01 != 0 {
		t.Errorf("MAC %s: want a locally administered unicast address", p.MAC)
	}
}

func TestPlanMinimal(t *testing.T) {
	cfg := fakeConfig(t)
	cfg.Arch = "" // the host's
	cfg.Network = false
	cfg.Disks, cfg.Shares, cfg.KernelArgs, cfg.ConsoleLog = nil, nil, nil, ""
	p, err := NewPlan(cfg, testHost)
	if err != nil {
		t.Fatal(err)
	}
	if p.MAC != nil || p.Disks != nil || p.Shares != nil || p.ConsoleLog != "" {
		t.Errorf("plan %+v", p)
	}
	if want := "console=hvc0 panic=-1 quiet vz.transport=vsock"; p.CommandLine != want {
		t.Errorf("command line %q, want %q", p.CommandLine, want)
	}
}

func TestPlanRelativePaths(t *testing.T) {
	cfg := fakeConfig(t)
	t.Chdir(filepath.Dir(cfg.Kernel))
	cfg.Kernel, cfg.Initrd, cfg.Disks[0].Path, cfg.Shares[0].Path, cfg.ConsoleLog = "kernel", "./initrd", "layer.img", "share", "console.log"
	p, err := NewPlan(cfg, testHost)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{p.Kernel, p.Initrd, p.Disks[0].Path, p.Shares[0].Path, p.ConsoleLog} {
		if !filepath.IsAbs(path) {
			t.Errorf("%s is not absolute", path)
		}
	}
}

func TestPlanMAC(t *testing.T) {
	mac := func(id, state string) string {
		cfg := fakeConfig(t)
		cfg.ID, cfg.StateDir = id, state
		p, err := NewPlan(cfg, testHost)
		if err != nil {
			t.Fatal(err)
		}
		return p.MAC.String()
	}
	a := mac("task1", "/run/ns1/task1/vm")
	if b := mac("task1", "/run/ns1/task1/vm"); a != b {
		t.Errorf("one task, two MACs: %s %s", a, b)
	}
	if b := mac("task2", "/run/ns1/task2/vm"); a == b {
		t.Errorf("two tasks, one MAC: %s", a)
	}
	if b := mac("task1", "/run/ns2/task1/vm"); a == b {
		t.Errorf("one id in two namespaces, one MAC: %s", a)
	}
}

func TestPlanSizes(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cpus, mib int
		ok        bool
	}{
		{"smallest", 1, 128, true},
		{"largest", 10, 16 << 10, true},
		{"no cpus", 0, 512, false},
		{"negative cpus", -1, 512, false},
		{"too many cpus", 11, 512, false},
		{"too little memory", 2, 127, false},
		{"no memory", 2, 0, false},
		{"negative memory", 2, -512, false},
		{"too much memory", 2, 16<<10 + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fakeConfig(t)
			cfg.CPUs, cfg.MemoryMiB = tc.cpus, tc.mib
			p, err := NewPlan(cfg, testHost)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				if p.CPUs != uint(tc.cpus) || p.MemoryBytes != uint64(tc.mib)<<20 || p.MemoryBytes%(1<<20) != 0 {
					t.Errorf("size %d cpus %d bytes", p.CPUs, p.MemoryBytes)
				}
				return
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("err %v, want invalid argument", err)
			}
		})
	}
}

func TestPlanErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*testing.T, *vm.Config)
		want   string // in the error
	}{
		{"other arch", func(_ *testing.T, c *vm.Config) { c.Arch = "amd64" }, "arch amd64"},
		{"no kernel", func(_ *testing.T, c *vm.Config) { c.Kernel = "" }, "kernel not set"},
		{"missing kernel", func(_ *testing.T, c *vm.Config) { c.Kernel += ".missing" }, "kernel.missing"},
		{"kernel is a dir", func(_ *testing.T, c *vm.Config) { c.Kernel = c.StateDir }, "not a regular file"},
		{"compressed kernel", func(t *testing.T, c *vm.Config) {
			writeFile(t, c.Kernel, append([]byte{0x1f, 0x8b}, make([]byte, 62)...))
		}, "gzip-compressed"},
		{"not an Image", func(t *testing.T, c *vm.Config) { writeFile(t, c.Kernel, make([]byte, 64)) }, "not an arm64 Image"},
		{"short kernel", func(t *testing.T, c *vm.Config) { writeFile(t, c.Kernel, []byte("MZ")) }, "too short"},
		{"no initrd", func(_ *testing.T, c *vm.Config) { c.Initrd = "" }, "initrd not set"},
		{"missing initrd", func(_ *testing.T, c *vm.Config) { c.Initrd += ".missing" }, "initrd.missing"},
		{"disk without id", func(_ *testing.T, c *vm.Config) { c.Disks[0].ID = "" }, "disk 0: id \"\": empty"},
		{"disk id too long", func(_ *testing.T, c *vm.Config) { c.Disks[0].ID = strings.Repeat("a", 21) }, "longer than 20"},
		{"disk id not ascii", func(_ *testing.T, c *vm.Config) { c.Disks[0].ID = "layé" }, "not allowed"},
		{"disk id with space", func(_ *testing.T, c *vm.Config) { c.Disks[0].ID = "a b" }, "not allowed"},
		{"duplicate disk id", func(_ *testing.T, c *vm.Config) { c.Disks[1].ID = c.Disks[0].ID }, "duplicate id \"layer0\""},
		{"missing disk", func(_ *testing.T, c *vm.Config) { c.Disks[1].Path += ".missing" }, "rw.img.missing"},
		{"disk is a dir", func(_ *testing.T, c *vm.Config) { c.Disks[1].Path = c.StateDir }, "not a regular file"},
		{"share without tag", func(_ *testing.T, c *vm.Config) { c.Shares[0].Tag = "" }, "share 0: tag \"\": empty"},
		{"share tag too long", func(_ *testing.T, c *vm.Config) { c.Shares[0].Tag = strings.Repeat("é", 19) }, "longer than 36 bytes"},
		{"share tag with slash", func(_ *testing.T, c *vm.Config) { c.Shares[0].Tag = "a/b" }, "not allowed"},
		{"share tag dot-dot", func(_ *testing.T, c *vm.Config) { c.Shares[0].Tag = ".." }, "not a file name"},
		{"share tag not utf-8", func(_ *testing.T, c *vm.Config) { c.Shares[0].Tag = "\xff" }, "not UTF-8"},
		{"duplicate share tag", func(_ *testing.T, c *vm.Config) { c.Shares[1].Tag = c.Shares[0].Tag }, "duplicate tag \"s0\""},
		{"share is a file", func(_ *testing.T, c *vm.Config) { c.Shares[0].Path = c.Kernel }, "is not a directory"},
		{"missing share", func(_ *testing.T, c *vm.Config) { c.Shares[0].Path += ".missing" }, "is not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fakeConfig(t)
			tc.change(t, &cfg)
			_, err := NewPlan(cfg, testHost)
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("err %v, want invalid argument", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %q, want it to say %q", err, tc.want)
			}
		})
	}
}

// A missing file stays an fs.ErrNotExist under the errdefs class.
func TestPlanNotExist(t *testing.T) {
	cfg := fakeConfig(t)
	cfg.Initrd += ".missing"
	if _, err := NewPlan(cfg, testHost); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("err %v, want fs.ErrNotExist", err)
	}
}

// Share tags of 36 bytes and disk ids of 20 characters are the longest.
func TestPlanLongestNames(t *testing.T) {
	cfg := fakeConfig(t)
	cfg.Disks[0].ID = strings.Repeat("d", 20)
	cfg.Shares[0].Tag = strings.Repeat("é", 18)
	if _, err := NewPlan(cfg, testHost); err != nil {
		t.Fatal(err)
	}
}

// amd64 hosts take any kernel file: VZ boots a bzImage there.
func TestPlanAmd64(t *testing.T) {
	cfg := fakeConfig(t)
	cfg.Arch = "amd64"
	writeFile(t, cfg.Kernel, []byte("MZ"))
	host := testHost
	host.Arch = "amd64"
	if _, err := NewPlan(cfg, host); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// The arm64 kernel that make guest ARCH=arm64 builds is one VZ boots.
func TestPlanGuestKernel(t *testing.T) {
	kernel, err := filepath.Abs("../../_output/guest/arm64/kernel")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(kernel); err != nil {
		t.Skip("no arm64 guest: make guest ARCH=arm64")
	}
	cfg := fakeConfig(t)
	cfg.Kernel = kernel
	if _, err := NewPlan(cfg, testHost); err != nil {
		t.Fatal(err)
	}
}

// TestSharesTag: the shares device's tag is one VZ and the agent accept.
func TestSharesTag(t *testing.T) {
	if err := checkShareTag(SharesTag); err != nil {
		t.Errorf("SharesTag %q: %v", SharesTag, err)
	}
}

// TestPlanDiskModes: the runtime options' caching and sync modes reach the
// disks; a read-only disk never syncs; an unknown mode is refused.
func TestPlanDiskModes(t *testing.T) {
	for _, tc := range []struct {
		caching, sync string
		want          [2]DiskPlan // read-only layer, writable disk
	}{
		{"", "", [2]DiskPlan{{Caching: CachingCached, Sync: SyncNone}, {Caching: CachingCached, Sync: SyncFsync}}},
		{"automatic", "full", [2]DiskPlan{{Caching: CachingAutomatic, Sync: SyncNone}, {Caching: CachingAutomatic, Sync: SyncFull}}},
		{"uncached", "none", [2]DiskPlan{{Caching: CachingUncached, Sync: SyncNone}, {Caching: CachingUncached, Sync: SyncNone}}},
	} {
		cfg := fakeConfig(t)
		cfg.DiskCaching, cfg.DiskSync = tc.caching, tc.sync
		p, err := NewPlan(cfg, testHost)
		if err != nil {
			t.Fatal(err)
		}
		for i, d := range p.Disks {
			if d.Caching != tc.want[i].Caching || d.Sync != tc.want[i].Sync {
				t.Errorf("%q/%q: disk %s: caching %d sync %d, want %d %d", tc.caching, tc.sync, d.ID, d.Caching, d.Sync, tc.want[i].Caching, tc.want[i].Sync)
			}
		}
	}
	for _, bad := range [][2]string{{"writeback", ""}, {"", "always"}} {
		cfg := fakeConfig(t)
		cfg.DiskCaching, cfg.DiskSync = bad[0], bad[1]
		if _, err := NewPlan(cfg, testHost); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%q: %v, want invalid argument", bad, err)
		}
	}
}

// TestPlanRootDisk: a guest that boots from a root disk has no initrd; the disk is the first
// virtio-blk device (the guest's vda), read-only and cached, and the command line mounts it.
func TestPlanRootDisk(t *testing.T) {
	cfg := fakeConfig(t)
	root := filepath.Join(filepath.Dir(cfg.Kernel), "rootfs")
	if err := os.WriteFile(root, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Initrd, cfg.RootDisk = "", root
	p, err := NewPlan(cfg, testHost)
	if err != nil {
		t.Fatal(err)
	}
	if p.Initrd != "" {
		t.Errorf("initrd %q with a root disk", p.Initrd)
	}
	want := DiskPlan{ID: vm.RootDiskID, Path: root, ReadOnly: true, Caching: CachingCached, Sync: SyncNone}
	if len(p.Disks) != 3 || p.Disks[0] != want || p.Disks[1].ID != "layer0" {
		t.Errorf("disks %+v, want the root disk %+v first", p.Disks, want)
	}
	if want := "console=hvc0 panic=-1 quiet vz.transport=vsock root=/dev/vda rootfstype=ext4 ro init=/init vz.debug=1 loglevel=7"; p.CommandLine != want {
		t.Errorf("command line %q, want %q", p.CommandLine, want)
	}
	cfg.Initrd = filepath.Join(filepath.Dir(cfg.Kernel), "initrd")
	if _, err := NewPlan(cfg, testHost); !errdefs.IsInvalidArgument(err) {
		t.Errorf("initrd and root disk: %v, want an invalid argument", err)
	}
}
