//go:build linux

package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// fakeConfig is a valid config over empty kernel, initrd and disk files.
func fakeConfig(t *testing.T) vm.Config {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"kernel", "initrd", "layer.img", "rw,img"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	share := filepath.Join(dir, "share")
	state := filepath.Join(dir, "state")
	for _, d := range []string{share, state} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return vm.Config{
		ID:         "task1",
		Kernel:     filepath.Join(dir, "kernel"),
		Initrd:     filepath.Join(dir, "initrd"),
		KernelArgs: []string{"vz.debug=1", "loglevel=7"},
		Arch:       "amd64",
		CPUs:       2,
		MemoryMiB:  512,
		Disks: []vm.Disk{
			{ID: "layer0", Path: filepath.Join(dir, "layer.img"), ReadOnly: true},
			{ID: "rw", Path: filepath.Join(dir, "rw,img")},
		},
		Shares:     []vm.Share{{Tag: "rootfs", Path: share, ReadOnly: true}},
		Network:    true,
		ConsoleLog: filepath.Join(dir, "console.log"),
		StateDir:   state,
		Accel:      "tcg",
	}
}

// hasArgs reports whether argv holds want as consecutive elements.
func hasArgs(argv []string, want ...string) bool {
	for i := 0; i+len(want) <= len(argv); i++ {
		match := true
		for j, w := range want {
			if argv[i+j] != w {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}

func argValue(t *testing.T, argv []string, flag string) string {
	t.Helper()
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			return argv[i+1]
		}
	}
	t.Fatalf("no %s in %q", flag, argv)
	return ""
}

func TestCommandAmd64Serial(t *testing.T) {
	cfg := fakeConfig(t)
	m, err := New(context.Background(), cfg, WithVsock(false))
	if err != nil {
		t.Fatal(err)
	}
	argv := m.Command()
	t.Logf("argv: %q", argv)
	if argv[0] != "qemu-system-x86_64" {
		t.Errorf("binary %q", argv[0])
	}
	dir := filepath.Dir(cfg.Kernel)
	for _, want := range [][]string{
		{"-S"},
		{"-M", "q35"},
		{"-accel", "tcg,tb-size=64"},
		{"-device", "virtio-balloon-pci,free-page-reporting=on"},
		{"-cpu", "max"},
		{"-nodefaults", "-no-user-config"},
		{"-no-reboot"},
		{"-smp", "2"},
		{"-m", "512M"},
		{"-kernel", cfg.Kernel},
		{"-initrd", cfg.Initrd},
		{"-name", "guest=vz-task1"},
		{"-pidfile", filepath.Join(cfg.StateDir, PidFile)},
		{"-chardev", "socket,id=qmp,fd=3", "-mon", "chardev=qmp,mode=control"},
		{"-chardev", "file,id=console,path=" + cfg.ConsoleLog + ",append=on", "-serial", "chardev:console"},
		{"-device", "virtio-serial-pci,id=vser0"},
		{"-chardev", "socket,id=agent,fd=4"},
		{"-device", "virtserialport,bus=vser0.0,chardev=agent,name=agent,id=agentport"},
		{"-device", "virtio-rng-pci"},
		{"-drive", "file=" + dir + "/layer.img,format=raw,if=none,id=drive0,cache=writeback,aio=threads,readonly=on"},
		{"-device", "virtio-blk-pci,drive=drive0,id=disk0,serial=layer0"},
		// The comma in the path is doubled for QEMU's option parser.
		{"-drive", "file=" + dir + "/rw,,img,format=raw,if=none,id=drive1,cache=writeback,aio=threads,discard=unmap"},
		{"-device", "virtio-blk-pci,drive=drive1,id=disk1,serial=rw"},
		{"-fsdev", "local,id=fs0,path=" + dir + "/share,security_model=none,multidevs=remap,readonly=on"},
		{"-device", "virtio-9p-pci,fsdev=fs0,mount_tag=rootfs"},
		{"-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,romfile="},
	} {
		if !hasArgs(argv, want...) {
			t.Errorf("argv lacks %q", want)
		}
	}
	if hasArgs(argv, "vhost-vsock-pci") || strings.Contains(strings.Join(argv, " "), "vsock") {
		t.Errorf("serial transport with a vsock device: %q", argv)
	}
	// Ours first, the caller's last so they can override.
	if got, want := argValue(t, argv, "-append"), "console=ttyS0 panic=-1 quiet tsc=reliable no_timer_check rcupdate.rcu_expedited=1 vz.transport=serial vz.port=agent vz.debug=1 loglevel=7"; got != want {
		t.Errorf("-append %q, want %q", got, want)
	}
	if m.CID() != 0 {
		t.Errorf("CID %d on the serial transport", m.CID())
	}
}

func TestCommandArm64Vsock(t *testing.T) {
	cfg := fakeConfig(t)
	cfg.Arch = "arm64"
	cfg.Network = false
	cfg.Disks, cfg.Shares, cfg.KernelArgs, cfg.ConsoleLog, cfg.ID = nil, nil, nil, "", ""
	m, err := New(context.Background(), cfg, WithVsock(true))
	if err != nil {
		t.Fatal(err)
	}
	argv := m.Command()
	t.Logf("argv: %q", argv)
	if argv[0] != "qemu-system-aarch64" {
		t.Errorf("binary %q", argv[0])
	}
	if m.CID() < 3 || m.CID() == 0xffffffff {
		t.Errorf("CID %d", m.CID())
	}
	for _, want := range [][]string{
		{"-M", "virt,gic-version=max"},
		{"-accel", "tcg,tb-size=64"},
		{"-cpu", "max"},
		{"-device", fmt.Sprintf("vhost-vsock-pci,guest-cid=%d", m.CID())},
		{"-chardev", "null,id=console", "-serial", "chardev:console"},
	} {
		if !hasArgs(argv, want...) {
			t.Errorf("argv lacks %q", want)
		}
	}
	if got, want := argValue(t, argv, "-append"), "console=ttyAMA0 panic=-1 quiet vz.transport=vsock"; got != want {
		t.Errorf("-append %q, want %q", got, want)
	}
	for _, not := range []string{"-netdev", "-drive", "-fsdev", "-name", "socket,id=agent,fd=4"} {
		if hasArgs(argv, not) {
			t.Errorf("argv has %s: %q", not, argv)
		}
	}
	// Two machines get different CIDs.
	m2, err := New(context.Background(), cfg, WithVsock(true))
	if err != nil {
		t.Fatal(err)
	}
	if m2.CID() == m.CID() {
		t.Errorf("two machines share CID %d", m.CID())
	}
}

func TestCommandKVM(t *testing.T) {
	cfg := fakeConfig(t)
	cfg.Arch = runtime.GOARCH
	cfg.Accel = "kvm"
	m, err := New(context.Background(), cfg, WithVsock(false), WithBinary("/opt/qemu/bin/qemu"))
	if err != nil {
		t.Fatal(err)
	}
	argv := m.Command()
	if argv[0] != "/opt/qemu/bin/qemu" || !hasArgs(argv, "-cpu", "host") {
		t.Errorf("argv %q", argv)
	}
}

func TestDefaults(t *testing.T) {
	cfg := fakeConfig(t)
	cfg.Arch, cfg.Accel = "", ""
	m, err := New(context.Background(), cfg, WithVsock(false))
	if err != nil {
		t.Fatal(err)
	}
	if m.cfg.Arch != runtime.GOARCH || m.cfg.Accel != "tcg" {
		t.Errorf("defaults: arch %q accel %q", m.cfg.Arch, m.cfg.Accel)
	}
}

func TestNewDoesNotTouchCallersConfig(t *testing.T) {
	cfg := fakeConfig(t)
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, cfg.Disks[0].Path)
	if err != nil {
		t.Skip(err)
	}
	cfg.Disks[0].Path = rel
	if _, err := New(context.Background(), cfg, WithVsock(false)); err != nil {
		t.Fatal(err)
	}
	if cfg.Disks[0].Path != rel {
		t.Errorf("New changed the caller's disk path to %q", cfg.Disks[0].Path)
	}
}

func TestValidation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*vm.Config)
		want   string // in the error
		is     error  // also errors.Is, besides ErrInvalidArgument
	}{
		{"missing kernel", func(c *vm.Config) { c.Kernel = "/nonexistent/vmlinuz" }, "kernel: open /nonexistent/vmlinuz: no such file or directory", fs.ErrNotExist},
		{"missing initrd", func(c *vm.Config) { c.Initrd = "/nonexistent/initrd" }, "initrd: open /nonexistent/initrd", fs.ErrNotExist},
		{"no kernel", func(c *vm.Config) { c.Kernel = "" }, "kernel not set", nil},
		{"kernel is a directory", func(c *vm.Config) { c.Kernel = c.StateDir }, "is not a regular file", nil},
		{"bad arch", func(c *vm.Config) { c.Arch = "riscv64" }, `arch "riscv64"`, nil},
		{"bad accel", func(c *vm.Config) { c.Accel = "hvf" }, `accel "hvf"`, nil},
		{"kvm for another arch", func(c *vm.Config) {
			c.Accel = "kvm"
			c.Arch = map[string]string{"amd64": "arm64", "arm64": "amd64"}[runtime.GOARCH]
		}, "accel kvm cannot run", nil},
		{"no cpus", func(c *vm.Config) { c.CPUs = 0 }, "cpus 0", nil},
		{"tiny memory", func(c *vm.Config) { c.MemoryMiB = 16 }, "memory 16 MiB", nil},
		{"no state dir", func(c *vm.Config) { c.StateDir = "" }, "state dir not set", nil},
		{"missing state dir", func(c *vm.Config) { c.StateDir = "/nonexistent/state" }, "state dir /nonexistent/state is not a directory", nil},
		{"duplicate disk id", func(c *vm.Config) { c.Disks[1].ID = c.Disks[0].ID }, `duplicate id "layer0"`, nil},
		{"long disk id", func(c *vm.Config) { c.Disks[0].ID = strings.Repeat("x", 21) }, "longer than 20", nil},
		{"empty disk id", func(c *vm.Config) { c.Disks[0].ID = "" }, "empty", nil},
		{"comma in disk id", func(c *vm.Config) { c.Disks[0].ID = "a,b" }, "not allowed", nil},
		{"missing disk", func(c *vm.Config) { c.Disks[0].Path = "/nonexistent/layer.img" }, "/nonexistent/layer.img", fs.ErrNotExist},
		{"duplicate share tag", func(c *vm.Config) { c.Shares = append(c.Shares, c.Shares[0]) }, `duplicate tag "rootfs"`, nil},
		{"share not a directory", func(c *vm.Config) { c.Shares[0].Path = c.Kernel }, "is not a directory", nil},
		{"bad disk hot-plug bus", func(c *vm.Config) { c.DiskHotplugBus = "scsi" }, `disk hot-plug bus "scsi"`, nil},
		{"too many disks", func(c *vm.Config) {
			for i := len(c.Disks); i < 27; i++ { // 30 - rng - serial - net - 1 share = 26
				c.Disks = append(c.Disks, vm.Disk{ID: fmt.Sprint("d", i), Path: c.Disks[0].Path, ReadOnly: true})
			}
		}, "27 disks: this VM takes at most 26", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fakeConfig(t)
			tc.mutate(&cfg)
			_, err := New(context.Background(), cfg)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("error %q is not ErrInvalidArgument", err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %v", err, tc.is)
			}
		})
	}
}

// TestCommandDiskSlots: hot-plugged disks take PCIe root ports, or with the USB bus one XHCI
// controller (and one slot of the root bus, whatever their number).
func TestCommandDiskSlots(t *testing.T) {
	for _, bus := range []string{"", vm.DiskBusVirtio, vm.DiskBusUSB} {
		cfg := fakeConfig(t)
		cfg.DiskSlots = 3
		cfg.DiskHotplugBus = bus
		m, err := New(context.Background(), cfg, WithVsock(false))
		if err != nil {
			t.Fatal(err)
		}
		argv := strings.Join(m.Command(), " ")
		xhci, ports := strings.Count(argv, "qemu-xhci,id="+xhciID), strings.Count(argv, "pcie-root-port,id=diskslot")
		if bus == vm.DiskBusUSB && (xhci != 1 || ports != 0) || bus != vm.DiskBusUSB && (xhci != 0 || ports != 3) {
			t.Errorf("bus %q: %d XHCI controllers and %d disk root ports in %s", bus, xhci, ports, argv)
		}
		want := MaxDisks(vm.Config{Arch: cfg.Arch, Network: cfg.Network, Shares: cfg.Shares}) - 3
		if bus == vm.DiskBusUSB {
			want += 2
		}
		if got := MaxDisks(cfg); got != want {
			t.Errorf("bus %q: MaxDisks %d, want %d", bus, got, want)
		}
	}
}

func TestMaxDisks(t *testing.T) {
	for _, tc := range []struct {
		arch    string
		shares  int
		network bool
		want    int
	}{
		{"amd64", 0, false, 28},
		{"amd64", 1, true, 26},
		{"arm64", 0, true, 28},
		{"amd64", 40, false, 0},
	} {
		cfg := vm.Config{Arch: tc.arch, Network: tc.network, Shares: make([]vm.Share, tc.shares)}
		if got := MaxDisks(cfg); got != tc.want {
			t.Errorf("MaxDisks(%s, %d shares, network %v) = %d, want %d", tc.arch, tc.shares, tc.network, got, tc.want)
		}
	}
}

func TestNotStarted(t *testing.T) {
	m, err := New(context.Background(), fakeConfig(t), WithVsock(false))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := m.Dial(ctx, 1024); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Dial before Start: %v", err)
	}
	if err := m.Pause(ctx); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Pause before Start: %v", err)
	}
	if m.Pid() != 0 {
		t.Errorf("Pid %d before Start", m.Pid())
	}
	if err := m.Stop(ctx); err != nil {
		t.Errorf("Stop before Start: %v", err)
	}
	if err := m.Start(ctx); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Start after Stop: %v", err)
	}
}

func TestStartWithoutQEMU(t *testing.T) {
	cfg := fakeConfig(t)
	m, err := New(context.Background(), cfg, WithVsock(false), WithBinary("/nonexistent/qemu"))
	if err != nil {
		t.Fatal(err)
	}
	err = m.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/qemu") {
		t.Fatalf("Start: %v", err)
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("Done not closed after a failed Start")
	}
	if m.Err() == nil {
		t.Error("Err nil after a failed Start")
	}
	if err := m.Stop(context.Background()); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

func TestLogTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	if logTail(p, 100) != "" {
		t.Error("tail of a missing file")
	}
	var b strings.Builder
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	b.WriteString("\x1b[36mINFO\x1b[0m[0001] power off\r\n")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	// The last line is 31 bytes, each "line N" 8.
	for max, want := range map[int64]string{
		40: "line 99\nINFO[0001] power off",
		46: "line 99\nINFO[0001] power off", // "ine 98" is dropped
		47: "line 98\nline 99\nINFO[0001] power off",
	} {
		if got := logTail(p, max); got != want {
			t.Errorf("tail %d: %q, want %q", max, got, want)
		}
	}
}

// TestCommandRootDisk: a guest that boots from a root disk gets no -initrd, the disk read-only
// as the first virtio-blk device (its vda) and the kernel arguments that mount it.
func TestCommandRootDisk(t *testing.T) {
	cfg := fakeConfig(t)
	root := filepath.Join(filepath.Dir(cfg.Kernel), "rootfs")
	if err := os.WriteFile(root, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Initrd, cfg.RootDisk = "", root
	m, err := New(context.Background(), cfg, WithVsock(false))
	if err != nil {
		t.Fatal(err)
	}
	argv := m.Command()
	if hasArgs(argv, "-initrd") {
		t.Errorf("-initrd with a root disk: %q", argv)
	}
	rootDev := slices.Index(argv, "virtio-blk-pci,drive=rootdrive,id=rootdisk,serial="+vm.RootDiskID)
	layerDev := slices.Index(argv, "virtio-blk-pci,drive=drive0,id=disk0,serial=layer0")
	if rootDev < 0 || layerDev < 0 || rootDev > layerDev {
		t.Errorf("root disk device at %d, first layer at %d: want the root disk first: %q", rootDev, layerDev, argv)
	}
	if !hasArgs(argv, "-drive", "file="+root+",format=raw,if=none,id=rootdrive,readonly=on,cache=writeback,aio=threads") {
		t.Errorf("no read-only root drive: %q", argv)
	}
	if got, want := argValue(t, argv, "-append"), "console=ttyS0 panic=-1 quiet tsc=reliable no_timer_check rcupdate.rcu_expedited=1 vz.transport=serial vz.port=agent root=/dev/vda rootfstype=ext4 ro init=/init vz.debug=1 loglevel=7"; got != want {
		t.Errorf("-append %q, want %q", got, want)
	}

	for name, mod := range map[string]func(*vm.Config){
		"both":    func(c *vm.Config) { c.Initrd = filepath.Join(filepath.Dir(c.Kernel), "initrd") },
		"missing": func(c *vm.Config) { c.RootDisk += ".missing" },
		"disk id": func(c *vm.Config) { c.Disks[0].ID = vm.RootDiskID },
		"neither": func(c *vm.Config) { c.RootDisk = "" },
	} {
		c := cfg
		c.Disks = slices.Clone(cfg.Disks)
		mod(&c)
		if _, err := New(context.Background(), c, WithVsock(false)); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want an invalid argument", name, err)
		}
	}
}
