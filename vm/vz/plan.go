package vz

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// Host is what the plan needs to know of the machine it runs on. On darwin
// the limits come from Virtualization.framework itself
// (VZVirtualMachineConfiguration's minimum/maximumAllowed...).
type Host struct {
	// Arch is the host architecture: VZ runs guests of that one only.
	Arch string
	// MinCPUs and MaxCPUs bound the vCPU count.
	MinCPUs, MaxCPUs uint
	// MinMemory and MaxMemory bound the memory size, in bytes.
	MinMemory, MaxMemory uint64
	// USB tells that VMs here can have an XHCI controller and USB mass
	// storage attached while they run (macOS 15).
	USB bool
}

// Plan is everything the darwin code sets up, decided and checked.
type Plan struct {
	ID     string
	Kernel string // absolute
	// Initrd is the initramfs, absolute; "" when the guest boots from a
	// root disk, which is then Disks[0] (vm.Config.RootDisk).
	Initrd string
	// CommandLine is the kernel command line.
	CommandLine string
	CPUs        uint
	// MemoryBytes is a multiple of 1 MiB, as VZ requires.
	MemoryBytes uint64
	Disks       []DiskPlan
	// Shares are the directories of the one virtio-fs device SharesTag.
	Shares []SharePlan
	// MAC is the NIC's address; nil: no NIC.
	MAC net.HardwareAddr
	// ConsoleLog receives the guest console (hvc0), appended to; "": the
	// console goes nowhere.
	ConsoleLog string
	// Entropy gives the guest a virtio-rng device.
	Entropy bool
	// Hot is how disks are added to the running VM; zero: they cannot be.
	Hot HotPlan
	// Template is set in the template layout: the VM is saved as a
	// template, or restored from one.
	Template *TemplatePlan
}

// TemplatePlan is warm start on VZ (DESIGN.md §11). VZ restores a saved VM
// only into a configuration like the one it saved (same devices, same
// platform identity), and adds no virtio device to a VM that runs. So a
// template VM has, whatever its task: the root disk (the same image), an
// XHCI controller for the task's disks, which come after the restore as
// USB mass storage like a pod's (macOS 15), the one virtio-fs device of
// the shares (none in the template: the task's directories in a restored
// VM), one NAT NIC (the task's address in a restored VM, which the agent
// gives the guest's NIC in Setup, as the template's was the guest's at
// save), vsock, entropy and the console.
type TemplatePlan struct {
	// Restore is the saved state a restored VM starts from; "" for the VM
	// that is saved.
	Restore string
	// Disks are the task's, attached once the VM is restored (Hot).
	Disks []vm.Disk
}

// SharesDevice tells that the VM has the virtio-fs device SharesTag.
func (p Plan) SharesDevice() bool { return len(p.Shares) > 0 || p.Template != nil }

// HotPlan is how the VM takes disks while it runs (vm.DiskHotplugger): an
// XHCI controller that USB mass storage devices attach to (macOS 15), up
// to Slots at a time. VZ fixes its virtio-blk devices when it configures
// the VM, so a container that joins a running pod brings its disks this way.
type HotPlan struct {
	Slots int
	// Dir holds the stamped clones of read-only disks (the state dir).
	Dir string
	// Caching and Sync are the runtime options' disk modes.
	Caching, Sync string
}

// DiskPlan is one virtio-blk device over a raw disk image.
type DiskPlan struct {
	// ID is the block device identifier the guest finds the disk by.
	ID       string
	Path     string // absolute
	ReadOnly bool
	Caching  CachingMode
	Sync     SyncMode
}

// SharesTag is the virtio-fs tag of the one device that holds every share
// of a VM (a multiple-directory share), each as its directory named by the
// share's tag: one device however many directories a container binds. The
// agent mounts the device once and binds each directory in place
// (agent/shares.go).
const SharesTag = "vz-shares"

// SharePlan is one directory of the shares device (SharesTag), named Tag.
type SharePlan struct {
	Tag      string
	Path     string // absolute
	ReadOnly bool
}

// CachingMode mirrors vz.DiskImageCachingMode (kept apart so that the plan
// builds without cgo).
type CachingMode int

// Caching modes.
const (
	CachingAutomatic CachingMode = iota
	CachingUncached
	CachingCached
)

// SyncMode mirrors vz.DiskImageSynchronizationMode.
type SyncMode int

// Synchronization modes.
const (
	SyncFull SyncMode = iota
	SyncFsync
	SyncNone
)

// VZ's own limits that it only reports when a configuration fails to
// validate, checked here to name the culprit.
const (
	// maxDiskID: VZVirtioBlockDeviceConfiguration.blockDeviceIdentifier
	// is at most 20 bytes of ASCII (the virtio-blk serial).
	maxDiskID = 20
	// maxShareTag: VZVirtioFileSystemDeviceConfiguration tags are at most
	// 36 bytes of UTF-8 (the virtio-fs tag field).
	maxShareTag = 36
)

// NewPlan checks cfg against what VZ and this host accept and decides how
// each device is set up; a cfg with Restore gets the template layout.
// Errors are errdefs.ErrInvalidArgument and name the offending value or
// path.
func NewPlan(cfg vm.Config, host Host) (Plan, error) {
	if cfg.Restore != "" {
		return newPlan(cfg, host, true)
	}
	return newPlan(cfg, host, false)
}

// NewTemplatePlan is the plan of a VM to save as a template of cfg's
// (TemplatePlan): cfg has none of a task's disks, shares or network. VZ
// saves VMs from macOS 14 on Apple silicon, and the task's disks need USB
// (macOS 15): elsewhere it fails with errdefs.ErrNotImplemented.
func NewTemplatePlan(cfg vm.Config, host Host) (Plan, error) {
	if len(cfg.Disks) > 0 || len(cfg.Shares) > 0 || cfg.Network || cfg.Restore != "" {
		return Plan{}, invalid("a template has no disks, shares or network of a task, and is not restored")
	}
	return newPlan(cfg, host, true)
}

func newPlan(cfg vm.Config, host Host, template bool) (Plan, error) {
	p := Plan{ID: cfg.ID, Entropy: true}
	if template {
		if !host.USB || host.Arch != "arm64" {
			return p, fmt.Errorf("vz: warm start needs Apple silicon and macOS 15 (saved VMs, USB mass storage for the task's disks): %w", errdefs.ErrNotImplemented)
		}
		if cfg.DiskSlots > vm.TemplateSlots || len(cfg.Disks) > vm.TemplateSlots {
			return p, invalid("a VM restored from a template takes at most %d disks", vm.TemplateSlots)
		}
		p.Template = &TemplatePlan{Restore: cfg.Restore}
		if cfg.Restore != "" {
			if fi, err := os.Stat(cfg.Restore); err != nil || !fi.Mode().IsRegular() {
				return p, fmt.Errorf("vz: template %s is not a file: %w", cfg.Restore, errdefs.ErrNotFound)
			}
		}
		// The layout's, whatever the task's.
		cfg.DiskSlots, cfg.Network = vm.TemplateSlots, true
	}
	arch := cfg.Arch
	if arch == "" {
		arch = host.Arch
	}
	if arch != host.Arch {
		return p, invalid("arch %s: Virtualization.framework runs %s guests only on this host", arch, host.Arch)
	}

	if cfg.CPUs < 0 || uint(cfg.CPUs) < host.MinCPUs || uint(cfg.CPUs) > host.MaxCPUs {
		return p, invalid("cpus %d: want %d to %d", cfg.CPUs, host.MinCPUs, host.MaxCPUs)
	}
	p.CPUs = uint(cfg.CPUs)
	// MemoryMiB is whole MiB, so the 1 MiB multiple holds by construction.
	mem := uint64(max(cfg.MemoryMiB, 0)) << 20
	if cfg.MemoryMiB <= 0 || mem < host.MinMemory || mem > host.MaxMemory {
		return p, invalid("memory %d MiB: want %d to %d MiB", cfg.MemoryMiB, host.MinMemory>>20, host.MaxMemory>>20)
	}
	p.MemoryBytes = mem

	var (
		rootDisk string
		err      error
	)
	if p.Kernel, p.Initrd, rootDisk, err = vm.BootFiles(cfg); err != nil {
		return p, fmt.Errorf("vz: %w", err)
	}
	if arch == "arm64" {
		if err := checkArm64Image(p.Kernel); err != nil {
			return p, err
		}
	}
	if rootDisk != "" {
		// The first virtio-blk device: the guest's vda (vm.RootDiskArgs).
		dp, err := diskPlan(vm.RootDiskID, rootDisk, true, cfg.DiskCaching, cfg.DiskSync)
		if err != nil {
			return p, err
		}
		p.Disks = append(p.Disks, dp)
	}
	if cfg.ConsoleLog != "" {
		if p.ConsoleLog, err = filepath.Abs(cfg.ConsoleLog); err != nil {
			return p, invalid("console log: %v", err)
		}
	}

	ids := make(map[string]bool, len(cfg.Disks))
	planned := len(p.Disks)
	for i, d := range cfg.Disks {
		if err := checkDiskID(d.ID); err != nil {
			return p, invalid("disk %d: id %q: %v", i, d.ID, err)
		}
		if ids[d.ID] {
			return p, invalid("disk %d: duplicate id %q", i, d.ID)
		}
		ids[d.ID] = true
		path, err := regularFile("disk "+d.ID, d.Path)
		if err != nil {
			return p, err
		}
		dp, err := diskPlan(d.ID, path, d.ReadOnly, cfg.DiskCaching, cfg.DiskSync)
		if err != nil {
			return p, err
		}
		p.Disks = append(p.Disks, dp)
	}

	tags := make(map[string]bool, len(cfg.Shares))
	for i, s := range cfg.Shares {
		if err := checkShareTag(s.Tag); err != nil {
			return p, invalid("share %d: tag %q: %v", i, s.Tag, err)
		}
		if tags[s.Tag] {
			return p, invalid("share %d: duplicate tag %q", i, s.Tag)
		}
		tags[s.Tag] = true
		path, err := filepath.Abs(s.Path)
		if err != nil {
			return p, invalid("share %q: %v", s.Tag, err)
		}
		if fi, err := os.Stat(path); err != nil || !fi.IsDir() {
			return p, invalid("share %q: %s is not a directory", s.Tag, path)
		}
		p.Shares = append(p.Shares, SharePlan{Tag: s.Tag, Path: path, ReadOnly: s.ReadOnly})
	}

	if p.Template != nil {
		// After the restore, as USB mass storage (Hot): the template has
		// no disk of its task's.
		p.Template.Disks = append(p.Template.Disks, cfg.Disks...)
		p.Disks = p.Disks[:planned]
	}
	if cfg.Network {
		p.MAC = vm.NetworkMAC(cfg.ID, cfg.StateDir)
	}
	if cfg.DiskSlots < 0 {
		return p, invalid("disk slots %d: want 0 or more", cfg.DiskSlots)
	}
	// Without USB the VM still boots: only AddDisk fails, and says why.
	if cfg.DiskSlots > 0 && host.USB {
		if cfg.StateDir == "" {
			return p, invalid("disk slots need a state dir (for the disks' clones)")
		}
		dir, err := filepath.Abs(cfg.StateDir)
		if err != nil {
			return p, invalid("state dir: %v", err)
		}
		if _, err := diskPlan("check", dir, false, cfg.DiskCaching, cfg.DiskSync); err != nil {
			return p, err
		}
		p.Hot = HotPlan{Slots: cfg.DiskSlots, Dir: dir, Caching: cfg.DiskCaching, Sync: cfg.DiskSync}
	}
	extra := cfg.KernelArgs
	if rootDisk != "" {
		extra = append(vm.RootDiskArgs(), extra...)
	}
	p.CommandLine = commandLine(extra)
	return p, nil
}

// commandLine is ours first, the caller's last so that they can override
// (loglevel=7 brings the full boot log back). The agent reads vz.transport;
// console=hvc0 is the virtio console VZ gives the guest; panic=-1 turns a
// panic into a reboot, which VZ turns into a stopped VM.
func commandLine(extra []string) string {
	args := append([]string{"console=hvc0", "panic=-1", "quiet", "vz.transport=vsock"}, extra...)
	return strings.Join(args, " ")
}

// diskPlan chooses the caching and sync modes. Every disk is cached on the
// host: VZ's default (automatic, which means uncached on local storage) has
// corrupted ext4 in Linux guests, an uncached read racing APFS's delayed
// write-back into the holes of sparse images (lima#2026, UTM#5919); our
// writable layers are sparse. A writable disk syncs with fsync: a guest
// flush reaches the host kernel, which survives a crash of the VM or the
// shim, without the drive cache flush of "full" (F_FULLFSYNC) that costs
// milliseconds per guest flush; a container's writable layer does not
// outlive a host power loss in any runtime. A read-only disk is never
// written, so it needs no sync. The runtime options may choose otherwise
// (caching, sync: vm.Config's DiskCaching, DiskSync).
func diskPlan(id, path string, readOnly bool, caching, sync string) (DiskPlan, error) {
	d := DiskPlan{ID: id, Path: path, ReadOnly: readOnly, Caching: CachingCached, Sync: SyncFsync}
	switch caching {
	case "":
	case "automatic":
		d.Caching = CachingAutomatic
	case "cached":
		d.Caching = CachingCached
	case "uncached":
		d.Caching = CachingUncached
	default:
		return d, invalid("disk caching mode %q: want automatic, cached or uncached", caching)
	}
	switch sync {
	case "":
	case "full":
		d.Sync = SyncFull
	case "fsync":
		d.Sync = SyncFsync
	case "none":
		d.Sync = SyncNone
	default:
		return d, invalid("disk sync mode %q: want full, fsync or none", sync)
	}
	if readOnly {
		d.Sync = SyncNone
	}
	return d, nil
}

// checkDiskID accepts what VZ takes and the guest reads back verbatim from
// the virtio-blk serial: printable ASCII without spaces.
func checkDiskID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("empty")
	case len(id) > maxDiskID:
		return fmt.Errorf("longer than %d characters", maxDiskID)
	}
	for _, r := range id {
		if r <= ' ' || r > '~' {
			return fmt.Errorf("character %q not allowed", r)
		}
	}
	return nil
}

// checkShareTag accepts what VZ takes as a virtio-fs tag and the agent
// mounts as <shares dir>/<tag> (agent/shares.go).
func checkShareTag(tag string) error {
	switch {
	case tag == "":
		return fmt.Errorf("empty")
	case len(tag) > maxShareTag:
		return fmt.Errorf("longer than %d bytes", maxShareTag)
	case !utf8.ValidString(tag):
		return fmt.Errorf("not UTF-8")
	case tag == "." || tag == "..":
		return fmt.Errorf("not a file name")
	}
	for _, r := range tag {
		if r < ' ' || r == 0x7f || r == '/' || r == ',' {
			return fmt.Errorf("character %q not allowed", r)
		}
	}
	return nil
}

// checkArm64Image fails early on a kernel VZ would refuse with a bare
// "Internal Virtualization error": on arm64 it boots only an uncompressed
// Image (magic "ARM\x64" at offset 56), not a vmlinuz.
func checkArm64Image(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("vz: kernel: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	defer f.Close()
	var hdr [64]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return invalid("kernel %s: too short for an arm64 Image", path)
	}
	if !bytes.Equal(hdr[56:60], []byte("ARM\x64")) {
		if hdr[0] == 0x1f && hdr[1] == 0x8b {
			return invalid("kernel %s is gzip-compressed: Virtualization.framework boots only an uncompressed arm64 Image", path)
		}
		return invalid("kernel %s is not an arm64 Image", path)
	}
	return nil
}

// regularFile is vm.ReadableFile with the backend's name on its errors.
func regularFile(what, path string) (string, error) {
	abs, err := vm.ReadableFile(what, path)
	if err != nil {
		return "", fmt.Errorf("vz: %w", err)
	}
	return abs, nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("vz: "+format+": %w", append(args, errdefs.ErrInvalidArgument)...)
}
