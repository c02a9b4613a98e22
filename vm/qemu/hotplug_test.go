//go:build linux

package qemu

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// virtioStatuses is the device status the guest's driver set on a virtio device (QMP
// x-query-virtio-status): DRIVER_OK once the guest uses it.
func virtioStatuses(t *testing.T, m *Machine, dev string) []string {
	t.Helper()
	ret, err := m.qmp.execute(context.Background(), "x-query-virtio-status", map[string]any{"path": "/machine/peripheral/" + dev + "/virtio-backend"})
	if err != nil {
		return nil
	}
	var st struct {
		Status struct {
			Statuses []string `json:"statuses"`
		} `json:"status"`
	}
	if err := json.Unmarshal(ret, &st); err != nil {
		t.Fatal(err)
	}
	return st.Status.Statuses
}

// TestVMDiskHotplug: disks join and leave a running VM: the guest's virtio-blk driver takes a
// hot-plugged disk (DRIVER_OK), and lets it go when asked; its slot is free again; slots run
// out; ids are unique.
func TestVMDiskHotplug(t *testing.T) {
	cfg := testConfig(t)
	cfg.DiskSlots = 1
	dir := t.TempDir()
	img := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg.Disks = []vm.Disk{{ID: "boot0", Path: img("boot0"), ReadOnly: true}}
	mc, err := New(context.Background(), cfg, WithVsock(false))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := mc.AddDisk(ctx, vm.Disk{ID: "early", Path: img("early")}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("AddDisk before Start: %v, want failed precondition", err)
	}
	mc.Stop(ctx)
	machine := startVM(t, cfg)
	waitAgent(t, machine).Close()

	if err := machine.AddDisk(ctx, vm.Disk{ID: "boot0", Path: img("dup")}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("AddDisk of a boot disk's id: %v, want already exists", err)
	}
	if err := machine.AddDisk(ctx, vm.Disk{ID: "hp0", Path: img("hp0"), ReadOnly: true}); err != nil {
		t.Fatalf("AddDisk: %v", err)
	}
	if err := machine.AddDisk(ctx, vm.Disk{ID: "hp1", Path: img("hp1")}); !errdefs.IsResourceExhausted(err) {
		t.Errorf("AddDisk past the slots: %v, want resource exhausted", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	driverOK := func(statuses []string) bool {
		return slices.ContainsFunc(statuses, func(s string) bool { return strings.HasPrefix(s, "VIRTIO_CONFIG_S_DRIVER_OK") })
	}
	for !driverOK(virtioStatuses(t, machine, diskDevID("hp0"))) {
		if time.Now().After(deadline) {
			t.Fatalf("the guest never took the hot-plugged disk: statuses %v", virtioStatuses(t, machine, diskDevID("hp0")))
		}
		time.Sleep(200 * time.Millisecond)
	}
	ret, err := machine.qmp.execute(ctx, "query-block", nil)
	if err != nil || !strings.Contains(string(ret), diskNodeID("hp0")) {
		t.Errorf("query-block: %s %v, want node %s", ret, err, diskNodeID("hp0"))
	}

	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	start := time.Now()
	if err := machine.RemoveDisk(rctx, "hp0"); err != nil {
		t.Fatalf("RemoveDisk: %v", err)
	}
	t.Logf("the guest released the disk after %s", time.Since(start).Round(time.Millisecond))
	if ret, _ := machine.qmp.execute(ctx, "query-block", nil); strings.Contains(string(ret), diskNodeID("hp0")) {
		t.Errorf("block node left after RemoveDisk: %s", ret)
	}
	if err := machine.RemoveDisk(rctx, "hp0"); !errdefs.IsNotFound(err) {
		t.Errorf("RemoveDisk twice: %v, want not found", err)
	}
	if err := machine.AddDisk(ctx, vm.Disk{ID: "hp1", Path: img("hp1")}); err != nil {
		t.Errorf("AddDisk into the freed slot: %v", err)
	}
}
