//go:build linux

package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// Qdev and block node names of a hot-plugged disk.
func diskDevID(id string) string  { return "disk-" + id }
func diskNodeID(id string) string { return "blk-" + id }

// AddDisk attaches d to the running (or launched) VM in a free disk slot:
// a raw block node (blockdev-add) behind a virtio-blk device whose serial
// is d.ID (device_add into a reserved PCIe root port, which the guest's
// PCIe hot-plug driver finds), or with vm.DiskBusUSB a USB mass storage
// device on the XHCI controller over the disk stamped with d.ID
// (vm.StampDisk; a read-only disk's stamped clone lives in StateDir).
func (m *Machine) AddDisk(ctx context.Context, d vm.Disk) error {
	m.lifecycle.Lock()
	defer m.lifecycle.Unlock()
	return m.addDisk(ctx, d)
}

// addDisk is AddDisk with lifecycle held.
func (m *Machine) addDisk(ctx context.Context, d vm.Disk) error {
	if err := checkToken(d.ID, maxDiskID); err != nil {
		return invalid("disk id %q: %v", d.ID, err)
	}
	path, err := filepath.Abs(d.Path)
	if err != nil {
		return invalid("disk %q: %v", d.ID, err)
	}
	if fi, err := os.Stat(path); err != nil || (!fi.Mode().IsRegular() && fi.Mode()&os.ModeDevice == 0) {
		return invalid("disk %q: %s is neither a file nor a block device", d.ID, path)
	}
	slot, err := m.reserveDiskSlot(d.ID)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			m.freeDiskSlot(d.ID)
		}
	}()
	usb := usbDisks(m.cfg)
	if usb {
		st, err := vm.StampDisk(vm.Disk{ID: d.ID, Path: path, ReadOnly: d.ReadOnly}, m.cfg.StateDir)
		if err != nil {
			return fmt.Errorf("qemu: vm %s: %w", m.cfg.ID, err)
		}
		path = st.Path
		// From here freeDiskSlot, on failure or RemoveDisk, removes the clone.
		m.mu.Lock()
		m.stamped[d.ID] = st
		m.mu.Unlock()
	}

	node := map[string]any{
		"driver": "raw", "node-name": diskNodeID(d.ID), "read-only": d.ReadOnly,
		"file": map[string]any{"driver": "file", "filename": path, "aio": "threads", "read-only": d.ReadOnly},
	}
	if !d.ReadOnly {
		node["discard"] = "unmap"
	}
	if _, err := m.qmp.execute(ctx, "blockdev-add", node); err != nil {
		return fmt.Errorf("qemu: vm %s: disk %s: %w", m.cfg.ID, d.ID, err)
	}
	dev := map[string]any{
		"driver": "virtio-blk-pci", "id": diskDevID(d.ID), "drive": diskNodeID(d.ID),
		"serial": d.ID, "bus": diskSlot(slot),
	}
	if usb {
		dev = map[string]any{"driver": "usb-storage", "id": diskDevID(d.ID), "drive": diskNodeID(d.ID), "bus": xhciID + ".0"}
	}
	if _, err := m.qmp.execute(ctx, "device_add", dev); err != nil {
		_, _ = m.qmp.execute(context.WithoutCancel(ctx), "blockdev-del", map[string]any{"node-name": diskNodeID(d.ID)})
		return fmt.Errorf("qemu: vm %s: disk %s: %w", m.cfg.ID, d.ID, err)
	}
	ok = true
	return nil
}

// RemoveDisk asks the guest to let the disk id go (device_del: a PCIe
// attention button press, which Linux honours after its 5 s grace period),
// waits for QEMU's DEVICE_DELETED until ctx ends, then removes the block
// node and frees the slot. A disk the guest keeps stays attached and in
// its slot. It does not hold up Stop while it waits.
func (m *Machine) RemoveDisk(ctx context.Context, id string) error {
	m.mu.Lock()
	found := false
	for _, d := range m.disks {
		found = found || d == id
	}
	var deleted chan struct{}
	if found {
		deleted = make(chan struct{})
		m.unplugged[diskDevID(id)] = deleted
	}
	m.mu.Unlock()
	if !found {
		return fmt.Errorf("qemu: vm %s: no hot-plugged disk %q: %w", m.cfg.ID, id, errdefs.ErrNotFound)
	}
	defer func() {
		m.mu.Lock()
		delete(m.unplugged, diskDevID(id))
		m.mu.Unlock()
	}()
	if _, err := m.qmp.execute(ctx, "device_del", map[string]any{"id": diskDevID(id)}); err != nil {
		return fmt.Errorf("qemu: vm %s: disk %s: %w", m.cfg.ID, id, err)
	}
	select {
	case <-deleted:
	case <-m.Done():
		return fmt.Errorf("qemu: vm %s: stopped while removing disk %s: %w", m.cfg.ID, id, errdefs.ErrUnavailable)
	case <-ctx.Done():
		return fmt.Errorf("qemu: vm %s: the guest did not release disk %s: %w: %w", m.cfg.ID, id, ctx.Err(), errdefs.ErrUnavailable)
	}
	if _, err := m.qmp.execute(ctx, "blockdev-del", map[string]any{"node-name": diskNodeID(id)}); err != nil {
		return fmt.Errorf("qemu: vm %s: disk %s: %w", m.cfg.ID, id, err)
	}
	m.freeDiskSlot(id)
	return nil
}

// removeStamped removes the clones of stamped disks once QEMU is gone.
func (m *Machine) removeStamped() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, st := range m.stamped {
		st.Remove()
		delete(m.stamped, id)
	}
}

// reserveDiskSlot takes a free slot for id.
func (m *Machine) reserveDiskSlot(id string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.launched {
		return 0, fmt.Errorf("qemu: vm %s: disk %s: not running: %w", m.cfg.ID, id, errdefs.ErrFailedPrecondition)
	}
	for _, d := range m.cfg.Disks {
		if d.ID == id {
			return 0, fmt.Errorf("qemu: vm %s: disk %s: %w", m.cfg.ID, id, errdefs.ErrAlreadyExists)
		}
	}
	free := -1
	for i, d := range m.disks {
		if d == id {
			return 0, fmt.Errorf("qemu: vm %s: disk %s: %w", m.cfg.ID, id, errdefs.ErrAlreadyExists)
		}
		if d == "" && free < 0 {
			free = i
		}
	}
	if free < 0 {
		return 0, fmt.Errorf("qemu: vm %s: disk %s: all %d disk slots are taken: %w", m.cfg.ID, id, len(m.disks), errdefs.ErrResourceExhausted)
	}
	m.disks[free] = id
	return free, nil
}

func (m *Machine) freeDiskSlot(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, d := range m.disks {
		if d == id {
			m.disks[i] = ""
		}
	}
	if st, ok := m.stamped[id]; ok {
		st.Remove()
		delete(m.stamped, id)
	}
}

// deviceDeleted wakes a RemoveDisk waiting for dev (QMP DEVICE_DELETED).
func (m *Machine) deviceDeleted(data json.RawMessage) {
	var d struct {
		Device string `json:"device"`
	}
	if json.Unmarshal(data, &d) != nil || d.Device == "" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if ch, ok := m.unplugged[d.Device]; ok {
		close(ch)
		delete(m.unplugged, d.Device)
	}
}
