//go:build linux

package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// Names of the files the backend keeps in vm.Config.StateDir.
const (
	// PidFile holds QEMU's pid. QEMU writes it itself (-pidfile), so its
	// path is on QEMU's command line: Cleanup checks that before it kills.
	// QEMU also locks it, so a second VM on the same StateDir fails to
	// start instead of sharing it.
	PidFile = "qemu.pid"
	// LogFile receives QEMU's own stdout and stderr (bad arguments, device
	// errors), not the guest console.
	LogFile = "qemu.log"
)

// File descriptors QEMU inherits (cmd.ExtraFiles): the host ends of its QMP
// and agent sockets are socketpairs, so there are no socket files to name,
// clean up, or keep under the 108-byte sun_path limit, and nobody else can
// connect to them.
const (
	qmpFD   = 3
	agentFD = 4
)

// Limits used by validation.
const (
	maxCPUs      = 255
	minMemoryMiB = 64
	maxMemoryMiB = 1 << 20
	maxDiskID    = 20 // virtio-blk serial
	maxShareTag  = 31 // the 9p mount tag limit of older QEMUs
	maxNICSlots  = 8
	maxDiskSlots = 16
	agentPort    = "agent"
	agentPortDev = "agentport" // qdev id: QEMU reports VSERPORT_CHANGE by it
	vhostVsock   = "/dev/vhost-vsock"
)

// validate checks cfg and returns a normalized copy: absolute paths and
// defaults for Arch and Accel.
func validate(cfg vm.Config) (vm.Config, error) {
	if cfg.Arch == "" {
		cfg.Arch = runtime.GOARCH
	}
	if cfg.Arch != "amd64" && cfg.Arch != "arm64" {
		return cfg, invalid("arch %q: want amd64 or arm64", cfg.Arch)
	}
	switch cfg.Accel {
	case "":
		// TCG works everywhere; KVM is the caller's explicit choice
		// (it is present but hangs on some hosts, see TESTING.md).
		cfg.Accel = "tcg"
	case "tcg":
	case "kvm":
		if cfg.Arch != runtime.GOARCH {
			return cfg, invalid("accel kvm cannot run a %s guest on a %s host", cfg.Arch, runtime.GOARCH)
		}
	default:
		return cfg, invalid("accel %q: want kvm or tcg", cfg.Accel)
	}
	if cfg.CPUs < 1 || cfg.CPUs > maxCPUs {
		return cfg, invalid("cpus %d: want 1 to %d", cfg.CPUs, maxCPUs)
	}
	if cfg.MemoryMiB < minMemoryMiB || cfg.MemoryMiB > maxMemoryMiB {
		return cfg, invalid("memory %d MiB: want %d to %d", cfg.MemoryMiB, minMemoryMiB, maxMemoryMiB)
	}

	var err error
	if cfg.Kernel, cfg.Initrd, cfg.RootDisk, err = vm.BootFiles(cfg); err != nil {
		return cfg, fmt.Errorf("qemu: %w", err)
	}
	if cfg.StateDir == "" {
		return cfg, invalid("state dir not set")
	}
	if cfg.StateDir, err = filepath.Abs(cfg.StateDir); err != nil {
		return cfg, invalid("state dir: %v", err)
	}
	if fi, err := os.Stat(cfg.StateDir); err != nil || !fi.IsDir() {
		return cfg, invalid("state dir %s is not a directory", cfg.StateDir)
	}
	if cfg.ConsoleLog != "" {
		if cfg.ConsoleLog, err = filepath.Abs(cfg.ConsoleLog); err != nil {
			return cfg, invalid("console log: %v", err)
		}
	}

	if err := validateDisks(cfg.Disks); err != nil {
		return cfg, err
	}
	// Copy the slices: we rewrite paths and must not touch the caller's.
	disks := make([]vm.Disk, len(cfg.Disks))
	for i, d := range cfg.Disks {
		d.Path, _ = filepath.Abs(d.Path)
		disks[i] = d
	}
	cfg.Disks = disks

	shares := make([]vm.Share, len(cfg.Shares))
	tags := make(map[string]bool, len(cfg.Shares))
	for i, s := range cfg.Shares {
		if err := checkToken(s.Tag, maxShareTag); err != nil {
			return cfg, invalid("share %d: tag %q: %v", i, s.Tag, err)
		}
		if tags[s.Tag] {
			return cfg, invalid("share %d: duplicate tag %q", i, s.Tag)
		}
		tags[s.Tag] = true
		if s.Path, err = filepath.Abs(s.Path); err != nil {
			return cfg, invalid("share %q: %v", s.Tag, err)
		}
		if fi, err := os.Stat(s.Path); err != nil || !fi.IsDir() {
			return cfg, invalid("share %q: %s is not a directory", s.Tag, s.Path)
		}
		shares[i] = s
	}
	cfg.Shares = shares
	if cfg.NICSlots < 0 || cfg.NICSlots > maxNICSlots {
		return cfg, invalid("%d NIC slots: want 0 to %d", cfg.NICSlots, maxNICSlots)
	}
	if cfg.DiskSlots < 0 || cfg.DiskSlots > maxDiskSlots {
		return cfg, invalid("%d disk slots: want 0 to %d", cfg.DiskSlots, maxDiskSlots)
	}
	switch cfg.DiskHotplugBus {
	case "", vm.DiskBusVirtio, vm.DiskBusUSB:
	default:
		return cfg, invalid("disk hot-plug bus %q: want %s or %s", cfg.DiskHotplugBus, vm.DiskBusVirtio, vm.DiskBusUSB)
	}
	if cfg.NetNS != "" {
		if cfg.NetNS, err = filepath.Abs(cfg.NetNS); err != nil {
			return cfg, invalid("network namespace: %v", err)
		}
		if _, err := os.Stat(cfg.NetNS); err != nil {
			return cfg, invalid("network namespace %s: %v", cfg.NetNS, err)
		}
	}
	if max := MaxDisks(cfg); len(cfg.Disks) > max {
		return cfg, invalid("%d disks: this VM takes at most %d", len(cfg.Disks), max)
	}
	cfg.KernelArgs = append([]string(nil), cfg.KernelArgs...)
	return cfg, nil
}

// validateDisks checks the disks' ids and paths.
func validateDisks(ds []vm.Disk) error {
	ids := make(map[string]bool, len(ds))
	for i, d := range ds {
		if err := checkToken(d.ID, maxDiskID); err != nil {
			return invalid("disk %d: id %q: %v", i, d.ID, err)
		}
		if ids[d.ID] {
			return invalid("disk %d: duplicate id %q", i, d.ID)
		}
		ids[d.ID] = true
		path, err := filepath.Abs(d.Path)
		if err != nil {
			return invalid("disk %q: %v", d.ID, err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("qemu: disk %q: %w: %w", d.ID, err, errdefs.ErrInvalidArgument)
		}
		if !fi.Mode().IsRegular() && fi.Mode()&os.ModeDevice == 0 {
			return invalid("disk %q: %s is neither a file nor a block device", d.ID, path)
		}
	}
	return nil
}

// validateTemplate checks a config with the template layout (saved as a
// template, or restored from one) and gives it the template's slots.
func validateTemplate(cfg *vm.Config) error {
	if cfg.DiskSlots > vm.TemplateSlots || cfg.NICSlots > vm.TemplateNICSlots || usbDisks(*cfg) {
		return invalid("a VM restored from a template has the template's hot-plug slots (%d virtio, %d NICs), not slots of its own", vm.TemplateSlots, vm.TemplateNICSlots)
	}
	if cfg.Network && cfg.Restore == "" {
		return invalid("a template has no NIC: user networking is added to the VMs restored from it")
	}
	if n := len(cfg.Disks) + len(cfg.Shares); n > vm.TemplateSlots {
		return invalid("%d disks and shares: a VM restored from a template takes at most %d", n, vm.TemplateSlots)
	}
	if cfg.Restore != "" {
		fi, err := os.Stat(cfg.Restore)
		if err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("qemu: template %s is not a file: %w", cfg.Restore, errdefs.ErrNotFound)
		}
	}
	cfg.DiskSlots, cfg.NICSlots, cfg.DiskHotplugBus = vm.TemplateSlots, vm.TemplateNICSlots, ""
	return nil
}

// MaxDisks is how many disks a VM like cfg takes. Every device has a slot
// of its own on the root PCI bus, which has 30 free slots on q35 (amd64) and
// 31 on virt (arm64); the entropy and agent devices, the NIC and each share
// take one.
func MaxDisks(cfg vm.Config) int {
	free := 30
	if cfg.Arch == "arm64" {
		free = 31
	}
	n := free - 2 - len(cfg.Shares) - cfg.NICSlots // virtio-rng, virtio-serial or vhost-vsock
	if usbDisks(cfg) {
		n-- // the XHCI controller
	} else {
		n -= cfg.DiskSlots
	}
	if cfg.Network {
		n--
	}
	return max(n, 0)
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("qemu: "+format+": %w", append(args, errdefs.ErrInvalidArgument)...)
}

// checkToken accepts the printable ASCII the guest sees verbatim (disk
// serial, mount tag): no spaces, and no commas, which QEMU's option parser
// would split on.
func checkToken(s string, max int) error {
	switch {
	case s == "":
		return fmt.Errorf("empty")
	case len(s) > max:
		return fmt.Errorf("longer than %d characters", max)
	}
	for _, r := range s {
		if r <= ' ' || r > '~' || r == ',' {
			return fmt.Errorf("character %q not allowed", r)
		}
	}
	return nil
}

// transportArgs says how the agent is reached.
type transportArgs struct {
	// vsock selects vhost-vsock-pci with cid; otherwise the agent is on a
	// virtserialport whose host end is fd agentFD.
	vsock bool
	cid   uint32
	// template: the template layout (SaveTemplate, vm.Config.Restore): no
	// disk, share or NIC devices of the task's on the command line (only
	// the shares' fsdev backends, for the 9p devices hot-plugged after a
	// restore), a VM generation ID, the agent told to wait to be woken,
	// and with Restore, QEMU waiting for the saved state.
	template bool
}

// DefaultTCGTBSizeMiB is the size of TCG's translation cache, in MiB,
// unless the config says otherwise.
const DefaultTCGTBSizeMiB = 64

// qemuBinary is the QEMU system emulator for arch.
func qemuBinary(arch string) string {
	if arch == "arm64" {
		return "qemu-system-aarch64"
	}
	return "qemu-system-x86_64"
}

// buildArgs returns QEMU's argv (without the binary) for a validated cfg.
// The machine starts paused (-S): Start connects to it before the guest
// runs, so the guest never finds the agent port unconnected (it would read
// end-of-file at once).
func buildArgs(cfg vm.Config, t transportArgs) []string {
	cpu := "max"
	if cfg.Accel == "kvm" {
		cpu = "host"
	}
	machine := "q35"
	console := "ttyS0"
	if cfg.Arch == "arm64" {
		// gic-version=max: GICv2 stops at 8 vCPUs.
		machine = "virt,gic-version=max"
		console = "ttyAMA0"
	}
	accel := cfg.Accel
	if accel == "tcg" {
		// QEMU's default translation cache is 1 GiB, and what TCG fills
		// of it stays in QEMU's RSS: a small one keeps an idle VM small,
		// a larger one retranslates less (measured here: 16 MiB, 159 MiB
		// RSS after boot, /init at 1.69 s; 32: 175, 1.55 s; 64: 198, 1.41 s).
		// 32 MiB is flushed over and over while runc creates and starts
		// the first container: ctr run --rm of a VM restored from a
		// template took 3.55 s with 32, 2.57-2.76 s with 64 and 128; an
		// idle VM's RSS 147 MiB with 32, 177 with 64.
		tb := cfg.TCGTBSizeMiB
		if tb <= 0 {
			tb = DefaultTCGTBSizeMiB
		}
		accel += ",tb-size=" + strconv.Itoa(tb)
	}
	a := []string{
		"-S",
		"-M", machine,
		"-accel", accel,
		"-cpu", cpu,
		"-nodefaults", "-no-user-config",
		"-display", "none",
		// A guest reboot (panic=-1 turns a panic into one) ends QEMU.
		"-no-reboot",
		// QEMU runs as root with a guest-facing attack surface.
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
	}
	if cfg.ID != "" {
		a = append(a, "-name", "guest=vz-"+optEscape(cfg.ID))
	}
	a = append(a,
		"-smp", strconv.Itoa(cfg.CPUs),
		"-m", strconv.Itoa(cfg.MemoryMiB)+"M",
		"-kernel", cfg.Kernel,
		"-pidfile", filepath.Join(cfg.StateDir, PidFile),
		"-chardev", fmt.Sprintf("socket,id=qmp,fd=%d", qmpFD),
		"-mon", "chardev=qmp,mode=control",
	)
	if cfg.ConsoleLog != "" {
		// append=on: a log the caller kept from an earlier boot stays.
		a = append(a, "-chardev", "file,id=console,path="+optEscape(cfg.ConsoleLog)+",append=on")
	} else {
		a = append(a, "-chardev", "null,id=console")
	}
	a = append(a, "-serial", "chardev:console")

	// "quiet" keeps the emulated UART (slow under TCG) for what matters:
	// warnings, panics, and the agent's own log. KernelArgs come last, so
	// "loglevel=7" there brings the full boot log back.
	cmdline := []string{"console=" + console, "panic=-1", "quiet"}
	if cfg.Arch == "amd64" {
		// QEMU's TSC is stable: no clocksource watchdog, no TSC sync
		// checks while CPUs come up, no timer check (~0.3 s of a TCG
		// boot here); expedited RCU grace periods shorten the boot too.
		cmdline = append(cmdline, "tsc=reliable", "no_timer_check", "rcupdate.rcu_expedited=1")
	}
	if t.vsock {
		a = append(a, "-device", fmt.Sprintf("vhost-vsock-pci,guest-cid=%d", t.cid))
		cmdline = append(cmdline, "vz.transport=vsock")
	} else {
		a = append(a,
			"-device", "virtio-serial-pci,id=vser0",
			"-chardev", fmt.Sprintf("socket,id=agent,fd=%d", agentFD),
			"-device", "virtserialport,bus=vser0.0,chardev=agent,name="+agentPort+",id="+agentPortDev,
		)
		cmdline = append(cmdline, "vz.transport=serial", "vz.port="+agentPort)
	}
	if cfg.Initrd != "" {
		a = append(a, "-initrd", cfg.Initrd)
	} else {
		cmdline = append(cmdline, vm.RootDiskArgs()...)
	}
	cmdline = append(cmdline, cfg.KernelArgs...)
	if t.template {
		cmdline = append(cmdline, vm.TemplateArg)
	}
	a = append(a, "-append", strings.Join(cmdline, " "))
	if t.template && cfg.Arch == "amd64" {
		// A new generation ID per QEMU (guid=auto): a restored guest is
		// told it is a copy and reseeds its random number generator.
		a = append(a, "-device", "vmgenid,guid=auto")
	}
	if cfg.Restore != "" {
		a = append(a, "-incoming", "defer")
	}

	a = append(a, "-device", "virtio-rng-pci")
	// The guest hands the pages it frees back to the host (free page
	// reporting): the initramfs and what a container used and freed do not
	// stay in QEMU's RSS.
	a = append(a, "-device", "virtio-balloon-pci,free-page-reporting=on")
	if cfg.RootDisk != "" {
		// First of the virtio-blk devices on the root bus: the guest's vda
		// (vm.RootDiskArgs). Read-only, so the VMs of a host share it.
		a = append(a,
			"-drive", fmt.Sprintf("file=%s,format=raw,if=none,id=rootdrive,readonly=on,cache=writeback,aio=threads", optEscape(cfg.RootDisk)),
			"-device", "virtio-blk-pci,drive=rootdrive,id=rootdisk,serial="+vm.RootDiskID,
		)
	}
	for i, d := range cfg.Disks {
		drive := fmt.Sprintf("file=%s,format=raw,if=none,id=drive%d,cache=writeback,aio=threads", optEscape(d.Path), i)
		if d.ReadOnly {
			drive += ",readonly=on"
		} else {
			// Let the guest's discards punch holes in sparse images.
			drive += ",discard=unmap"
		}
		a = append(a,
			"-drive", drive,
			"-device", fmt.Sprintf("virtio-blk-pci,drive=drive%d,id=disk%d,serial=%s", i, i, d.ID),
		)
	}
	for i, s := range cfg.Shares {
		// security_model=none: ownership and modes are the host's (real
		// chown as root), and failures to set them are ignored when not
		// root. multidevs=remap: a tree spanning several host file
		// systems (overlayfs) keeps unique inode numbers.
		fsdev := fmt.Sprintf("local,id=%s,path=%s,security_model=none,multidevs=remap", fsdevID(i), optEscape(s.Path))
		if s.ReadOnly {
			fsdev += ",readonly=on"
		}
		a = append(a, "-fsdev", fsdev)
		if !t.template {
			a = append(a, "-device", fmt.Sprintf("virtio-9p-pci,fsdev=%s,mount_tag=%s", fsdevID(i), s.Tag))
		}
	}
	// Root ports for NICs hot-plugged before the guest runs (AddNIC): the
	// root bus of q35 and virt takes no hot-plug. chassis numbers must be
	// unique.
	for i := 0; i < cfg.NICSlots; i++ {
		a = append(a, "-device", fmt.Sprintf("pcie-root-port,id=%s,chassis=%d", nicSlot(i), i+1))
	}
	if usbDisks(cfg) {
		// Hot-plugged disks are USB mass storage on it (AddDisk).
		a = append(a, "-device", "qemu-xhci,id="+xhciID)
	} else {
		for i := 0; i < cfg.DiskSlots; i++ {
			a = append(a, "-device", fmt.Sprintf("pcie-root-port,id=%s,chassis=%d", diskSlot(i), cfg.NICSlots+i+1))
		}
	}
	if cfg.Network {
		a = append(a, "-netdev", "user,id="+userNetdev)
		if !t.template {
			// romfile=: no iPXE option ROM; we boot the kernel directly.
			a = append(a, "-device", "virtio-net-pci,netdev="+userNetdev+",romfile=")
		}
	}
	return a
}

// optEscape escapes a value for QEMU's option parser, which splits on
// commas and reads ",," as a literal comma.
func optEscape(s string) string {
	return strings.ReplaceAll(s, ",", ",,")
}

// nicSlot is the qdev id of the i-th root port reserved for NICs.
func nicSlot(i int) string { return fmt.Sprintf("nicslot%d", i) }

// usbDisks tells that AddDisk attaches USB mass storage (vm.DiskBusUSB).
func usbDisks(cfg vm.Config) bool { return cfg.DiskSlots > 0 && cfg.DiskHotplugBus == vm.DiskBusUSB }

// xhciID is the qdev id of the USB controller of usbDisks.
const xhciID = "xhci"

// diskSlot is the qdev id of the i-th root port reserved for hot-plugged
// disks.
func diskSlot(i int) string { return fmt.Sprintf("diskslot%d", i) }
