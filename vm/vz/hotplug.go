package vz

import (
	"context"
	"fmt"
	"sync"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// A disk added to a running VM is a USB mass storage device on the VM's
// XHCI controller (VZUSBMassStorageDevice, VZUSBController.attach, macOS
// 15). It has no identifier the host can set, as virtio-blk's
// blockDeviceIdentifier is, so the guest finds it by a stamp in its first
// KiB (vm.StampDisk): in place on a writable disk, on a private APFS clone
// of a read-only one, which the machine removes when the disk is detached.

// usbBus is the VM's USB controller as the machine uses it; the darwin code
// adapts vz's, the tests fake it.
type usbBus interface {
	// Attach plugs a USB mass storage device over the disk image; detach
	// unplugs it.
	Attach(d DiskPlan) (detach func() error, err error)
}

// hotDisk is a disk attached to the running VM.
type hotDisk struct {
	detach  func() error
	stamped vm.StampedDisk
}

// hotplug is the machine's state of attached disks.
type hotplug struct {
	plan  HotPlan
	bus   usbBus
	mu    sync.Mutex
	disks map[string]hotDisk
}

var _ vm.DiskHotplugger = (*Machine)(nil)

// newHotplug returns the state of a VM planned with plan; nil when the
// plan has no slots.
func newHotplug(plan HotPlan, bus usbBus) *hotplug {
	if plan.Slots == 0 {
		return nil
	}
	return &hotplug{plan: plan, bus: bus, disks: make(map[string]hotDisk)}
}

// AddDisk attaches d to the running VM as USB mass storage, stamped with
// d.ID for the guest to find it by.
func (m *Machine) AddDisk(ctx context.Context, d vm.Disk) error {
	if err := m.running("add disk " + d.ID); err != nil {
		return err
	}
	h := m.hot
	if h == nil || h.bus == nil {
		return fmt.Errorf("vz: vm %s: adding a disk to a running VM needs macOS 15 (USB mass storage) and disk slots: %w", m.id, errdefs.ErrNotImplemented)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.disks[d.ID]; ok {
		return fmt.Errorf("vz: vm %s: disk %s: %w", m.id, d.ID, errdefs.ErrAlreadyExists)
	}
	if len(h.disks) >= h.plan.Slots {
		return fmt.Errorf("vz: vm %s: disk %s: all %d disk slots are taken: %w", m.id, d.ID, h.plan.Slots, errdefs.ErrResourceExhausted)
	}
	dp, st, err := prepareHotDisk(d, h.plan)
	if err != nil {
		return err
	}
	detach, err := h.bus.Attach(dp)
	if err != nil {
		st.Remove()
		return fmt.Errorf("vz: vm %s: attaching disk %s: %w", m.id, d.ID, err)
	}
	h.disks[d.ID] = hotDisk{detach: detach, stamped: st}
	m.log.WithField("disk", d.ID).WithField("path", dp.Path).Debug("vz: disk attached")
	return nil
}

// RemoveDisk detaches the disk id (the guest must have unmounted it) and
// removes its clone. On a stopped VM only the clone is left to remove.
func (m *Machine) RemoveDisk(ctx context.Context, id string) error {
	h := m.hot
	if h == nil {
		return fmt.Errorf("vz: vm %s: disk %s: %w", m.id, id, errdefs.ErrNotFound)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.disks[id]
	if !ok {
		return fmt.Errorf("vz: vm %s: disk %s: %w", m.id, id, errdefs.ErrNotFound)
	}
	select {
	case <-m.Done():
	default:
		if err := d.detach(); err != nil {
			return fmt.Errorf("vz: vm %s: detaching disk %s: %w", m.id, id, err)
		}
	}
	delete(h.disks, id)
	if err := d.stamped.Remove(); err != nil {
		return fmt.Errorf("vz: vm %s: disk %s: %w", m.id, id, err)
	}
	return nil
}

// removeClones removes every clone left once the VM is gone.
func (h *hotplug) removeClones() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, d := range h.disks {
		d.stamped.Remove()
		delete(h.disks, id)
	}
}

// prepareHotDisk checks d, stamps it (a read-only disk on a clone in
// plan.Dir, vm.StampDisk) and returns the disk to attach and its stamping.
func prepareHotDisk(d vm.Disk, plan HotPlan) (DiskPlan, vm.StampedDisk, error) {
	if err := checkDiskID(d.ID); err != nil {
		return DiskPlan{}, vm.StampedDisk{}, invalid("disk id %q: %v", d.ID, err)
	}
	st, err := vm.StampDisk(d, plan.Dir)
	if err != nil {
		return DiskPlan{}, vm.StampedDisk{}, fmt.Errorf("vz: %w", err)
	}
	dp, err := diskPlan(d.ID, st.Path, d.ReadOnly, plan.Caching, plan.Sync)
	if err != nil {
		st.Remove()
		return DiskPlan{}, vm.StampedDisk{}, err
	}
	return dp, st, nil
}
