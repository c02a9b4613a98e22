// Package guest assembles what the micro-VM boots: the kernel from a Debian
// kernel package, and an initramfs holding the agent as /init, runc, and the
// kernel modules the agent loads (DESIGN.md §5). It is pure Go and builds
// for any host, macOS included.
package guest

// Modules are the drivers the guest needs that Debian's kernel builds as
// modules, by module name. Their dependencies (modules.dep) come along; those
// the kernel has built in are skipped.
var Modules = []string{
	// Virtio transports: PCI (QEMU q35, VZ) and MMIO (QEMU microvm).
	"virtio_pci",
	"virtio_mmio",
	// Disks: one virtio-blk disk per block mount and layer.
	"virtio_blk",
	// The serial transport (a virtserialport named on the command line)
	// and VZ's console port.
	"virtio_console",
	// The vsock transport.
	"vsock",
	"vmw_vsock_virtio_transport",
	// The VM's NIC.
	"virtio_net",
	// Layer and writable images, stacked with overlayfs.
	"ext4",
	"overlay",
	// ext4's metadata checksums need the "crc32c" crypto algorithm: a
	// softdep that modules.dep does not list, so it is named here.
	"crc32c_generic",
	// Host directory shares: 9p under QEMU, virtio-fs under VZ.
	"9p",
	"9pnet_virtio",
	"virtiofs",
	// VZ's entropy device, so the guest's RNG needs no wait.
	"virtio_rng",
	// Free page reporting: freed guest memory goes back to the host.
	"virtio_balloon",
	// Layers of containerd's erofs snapshotter, and xfs disks.
	"erofs",
	"xfs",
}

// OptionalModules are in the image too, but the agent loads a group (and
// the dependencies only it needs) only when the kernel command line asks
// for it (api/modgroups): under TCG loading these at every boot costs a
// second.
var OptionalModules = map[string][]string{
	// Disks added to a running VZ VM (a pod's joining containers) are USB
	// mass storage on an XHCI controller (vm/vz/hotplug.go): SCSI disks.
	"usb": {"xhci_pci", "usb_storage", "sd_mod"},
	// Bridges that privileged containers make (CNI's bridge plugin inside
	// a pod, critest's privileged specs): a runc host's kernel loads them
	// on demand; the guest has no modprobe.
	"bridge": {"bridge"},
}
