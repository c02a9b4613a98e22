// Package vm is the interface between the shim and the virtual machine
// monitors that run a task's micro-VM: Virtualization.framework on macOS
// (vm/vz) and QEMU on Linux (vm/qemu). Everything above this package is the
// same on every backend.
package vm

import (
	"context"
	"crypto/sha256"
	"net"
	"os"

	"github.com/vz-shim/containerd-shim-vz/transport"
)

// Config describes one micro-VM. Paths are host paths.
type Config struct {
	// ID names the VM (the task id); it appears in logs and process names.
	ID string
	// Kernel is booted directly, without firmware, with either Initrd (an
	// initramfs, which holds /init) or RootDisk (a read-only ext4 image
	// the kernel mounts as "/" and runs /init from: a kernel with virtio-blk
	// and ext4 built in). Exactly one of the two.
	Kernel   string
	Initrd   string
	RootDisk string
	// KernelArgs are added to the command line the backend builds itself
	// (console, transport, panic behaviour).
	KernelArgs []string
	// Arch is the guest architecture: "amd64" or "arm64".
	Arch string
	// CPUs and MemoryMiB size the VM.
	CPUs      int
	MemoryMiB int
	// Disks become virtio-blk devices, in order.
	Disks []Disk
	// Shares are host directories the guest mounts (virtio-fs or 9p).
	Shares []Share
	// Network gives the VM one NIC with NAT / user networking.
	Network bool
	// NetNS is the path of a network namespace the VMM runs in (Linux):
	// its NICs are taps of that namespace (Launcher.AddNIC).
	NetNS string
	// NICSlots reserves hot-plug slots for NICs added with
	// Launcher.AddNIC (QEMU: PCIe root ports).
	NICSlots int
	// DiskSlots reserves hot-plug slots for disks added to the running VM
	// with DiskHotplugger.AddDisk (QEMU: PCIe root ports).
	DiskSlots int
	// DiskHotplugBus is how AddDisk attaches a disk: "" or DiskBusVirtio
	// (a virtio-blk device whose serial is its ID: QEMU's way) or DiskBusUSB
	// (USB mass storage stamped with its ID, StampDisk: VZ's only way, and
	// QEMU's when asked, which runs the guest's half of VZ's on Linux).
	DiskHotplugBus string
	// ConsoleLog receives the guest's console output.
	ConsoleLog string
	// StateDir holds the backend's own files (sockets, pid file). It must
	// exist; the backend removes what it made there when the VM is gone.
	StateDir string
	// Accel is the QEMU accelerator ("kvm" or "tcg"); other backends
	// ignore it.
	Accel string
	// TCGTBSizeMiB is the size of TCG's translation cache in MiB (QEMU
	// with accel tcg; 0: the backend's default).
	TCGTBSizeMiB int
	// DiskCaching ("automatic", "cached", "uncached") and DiskSync
	// ("full", "fsync", "none", for writable disks) are VZ's disk image
	// modes; "" is the backend's choice. QEMU ignores them.
	DiskCaching string
	DiskSync    string
	// Restore starts the VM from a saved template (a file the backend's
	// SaveTemplate wrote, DESIGN.md §11) instead of booting it. The
	// template must have been saved from this Config without its Disks,
	// Shares and NICs: those are attached after the restore, in the
	// template's hot-plug slots (TemplateSlots, TemplateNICSlots), before
	// Start lets the guest run.
	Restore string
}

// A template VM (and every VM restored from one) has these hot-plug slots
// whatever its task needs, so that one save fits every task: disks and
// shares share TemplateSlots, and in a VM that containers join
// (Config.DiskSlots) so do their disks.
const (
	TemplateSlots    = 12
	TemplateNICSlots = 4
)

// TemplateArg is the kernel argument that makes the agent of a template VM
// wait to be saved and woken (transport.AwaitWake) before it serves.
const TemplateArg = "vz.template=1"

// RootDiskID is the id (serial) of Config.RootDisk; no other disk may use it.
const RootDiskID = "vz-root"

// RootDiskArgs are the kernel arguments that boot from Config.RootDisk.
// Backends attach it as the guest's first virtio-blk device, ahead of the
// Disks, so the kernel names it vda.
func RootDiskArgs() []string {
	return []string{"root=/dev/vda", "rootfstype=ext4", "ro", "init=/init"}
}

// Buses of DiskHotplugBus.
const (
	DiskBusVirtio = "virtio"
	DiskBusUSB    = "usb"
)

// Disk is a raw disk image attached as virtio-blk.
type Disk struct {
	// ID is how the guest finds the disk: the virtio-blk serial (QEMU) or
	// the block device identifier (VZ), at most 20 ASCII characters.
	ID       string
	Path     string
	ReadOnly bool
}

// Share is a host directory shared into the guest under Tag.
type Share struct {
	Tag      string
	Path     string
	ReadOnly bool
}

// Machine is a running (or stopped) VM.
type Machine interface {
	// Start boots the VM and returns once the VMM runs it; the agent is
	// not up yet (Dial until it answers).
	Start(ctx context.Context) error
	// Dial opens a stream to a port of the guest (the agent's ports).
	transport.Dialer
	// Done is closed once the VM has stopped, for whatever reason.
	Done() <-chan struct{}
	// Err tells why the VM stopped (nil for a clean power-off); it is only
	// meaningful after Done is closed.
	Err() error
	// Pause and Resume freeze and thaw the whole VM.
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// Stop asks the VM to power off, waits until it did or ctx ends, and
	// then forces it off. It returns once the VMM is gone and its files in
	// StateDir are removed.
	Stop(ctx context.Context) error
	// Pid is the VMM's process id on the host, or 0 when the VM runs in
	// the shim's own process (VZ).
	Pid() int
}

// NIC is a network interface of the guest backed by a host tap device.
type NIC struct {
	// ID names the NIC among the VM's devices.
	ID string
	// MAC and MTU are the guest NIC's.
	MAC net.HardwareAddr
	MTU int
	// Tap is the open tap device; the VMM gets a copy of it, the caller
	// keeps and closes its own.
	Tap *os.File
}

// Launcher is a Machine whose VMM can run before its guest does. OCI hooks
// want the VMM's pid in its network namespace, and the NICs of the
// interfaces they make there are added after: Launch, hooks, AddNIC, then
// Start lets the guest run.
type Launcher interface {
	Machine
	// Launch starts the VMM with the guest's vCPUs stopped.
	Launch(ctx context.Context) error
	// AddNIC adds a NIC to a launched machine, before Start.
	AddNIC(ctx context.Context, nic NIC) error
}

// DiskHotplugger is a Machine that takes disks while it runs: the
// containers that join a running VM (a pod's) bring their rootfs.
type DiskHotplugger interface {
	// AddDisk attaches d in a free disk slot; the guest finds it by d.ID.
	AddDisk(ctx context.Context, d Disk) error
	// RemoveDisk detaches the disk id once the guest let it go (it must
	// not be mounted there) and frees its slot.
	RemoveDisk(ctx context.Context, id string) error
}

// NetworkMAC is the address of the NIC of Config.Network, derived from the
// task so that a VM gets the same one (and from a DHCP server that keeps
// leases, macOS's bootpd, the same lease) each time its task boots, and
// that two VMs restored from one template do not share the template's.
// The state dir is hashed too: it holds the namespace, and two tasks of one
// id in two namespaces run side by side on the same NAT network. The
// address is unicast and locally administered.
func NetworkMAC(id, stateDir string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("containerd-vz\x00" + id + "\x00" + stateDir))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}
