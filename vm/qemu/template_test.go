//go:build linux

package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// saveTestTemplate saves the template of testConfig's VM into a file of
// its own and returns the path.
func saveTestTemplate(t *testing.T) (vm.Config, string) {
	t.Helper()
	cfg := testConfig(t)
	state := filepath.Join(t.TempDir(), "template.state")
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	start := time.Now()
	if err := SaveTemplate(ctx, cfg, state, WithVsock(false)); err != nil {
		t.Fatalf("SaveTemplate: %v\nconsole:\n%s", err, logTail(cfg.ConsoleLog, 4096))
	}
	fi, err := os.Stat(state)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("template saved in %v: %.1f MiB", time.Since(start).Round(time.Millisecond), float64(fi.Size())/(1<<20))
	assertOnlyConsole(t, cfg.StateDir)
	return cfg, state
}

// TestTemplateRestore saves a template and restores two VMs from it, each
// with a disk and a share hot-plugged, each with an agent that answers.
func TestTemplateRestore(t *testing.T) {
	cfg, state := saveTestTemplate(t)
	for _, name := range []string{"first", "second"} {
		t.Run(name, func(t *testing.T) {
			rcfg := testConfig(t)
			dir := t.TempDir()
			disk := filepath.Join(dir, "layer.img")
			if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			rcfg.Disks = []vm.Disk{{ID: "layer-0", Path: disk, ReadOnly: true}}
			rcfg.Shares = []vm.Share{{Tag: "share0", Path: dir, ReadOnly: true}}
			rcfg.Network = true
			rcfg.Restore = state
			t0 := time.Now()
			m := startVM(t, rcfg)
			conn := waitAgent(t, m)
			t.Logf("restore to agent: %v", time.Since(t0).Round(time.Millisecond))
			client := ttrpc.NewClient(conn)
			defer client.Close()
			resp, err := info(context.Background(), client, 10*time.Second)
			if err != nil {
				t.Fatalf("Info: %v", err)
			}
			if !resp.Init {
				t.Errorf("Info: not the guest's init: %+v", resp)
			}
			ctx := context.Background()
			for _, dev := range []string{"disk-layer-0", "share0", "nic-" + userNetdev} {
				if _, err := m.qmp.execute(ctx, "qom-get", map[string]string{"path": "/machine/peripheral/" + dev, "property": "type"}); err != nil {
					t.Errorf("device %s not attached after the restore: %v", dev, err)
				}
			}
			// The restored QEMU has the template's command line, not one
			// with the task's devices.
			if mac, err := m.qmp.execute(ctx, "qom-get", map[string]string{"path": "/machine/peripheral/nic-" + userNetdev, "property": "mac"}); err != nil || !strings.Contains(string(mac), vm.NetworkMAC(rcfg.ID, rcfg.StateDir).String()) {
				t.Errorf("user NIC's mac %s (%v), want the task's %s", mac, err, vm.NetworkMAC(rcfg.ID, rcfg.StateDir))
			}
			if cmd := strings.Join(m.Command(), " "); !strings.Contains(cmd, "-incoming defer") || strings.Contains(cmd, "virtio-9p-pci") || strings.Contains(cmd, "virtio-net-pci") {
				t.Errorf("restore command line: %s", cmd)
			}
		})
	}
	_ = cfg
}

// TestTemplateCorrupt: a template that does not load fails Launch with
// QEMU's reason, and leaves nothing behind.
func TestTemplateCorrupt(t *testing.T) {
	cfg := testConfig(t)
	state := filepath.Join(t.TempDir(), "template.state")
	if err := os.WriteFile(state, []byte("QEVM garbage, not a migration stream"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Restore = state
	m, err := New(context.Background(), cfg, WithVsock(false))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = m.Launch(ctx)
	if err == nil {
		m.Stop(ctx)
		t.Fatal("Launch restored a garbage template")
	}
	t.Logf("Launch: %v", err)
	<-m.Done()
	if err := m.Stop(ctx); err != nil {
		t.Errorf("Stop: %v", err)
	}
	assertOnlyConsole(t, cfg.StateDir)
}

// TestTemplateConfig: what a template and a restore refuse.
func TestTemplateConfig(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "kernel")
	os.WriteFile(kernel, []byte("k"), 0o600)
	base := vm.Config{ID: "t", Kernel: kernel, Initrd: kernel, Arch: "amd64", CPUs: 1, MemoryMiB: 128, StateDir: dir}
	withDisk := base
	withDisk.Disks = []vm.Disk{{ID: "d", Path: kernel}}
	if err := SaveTemplate(context.Background(), withDisk, filepath.Join(dir, "s"), WithVsock(false)); !errdefs.IsInvalidArgument(err) {
		t.Errorf("SaveTemplate with a disk: %v", err)
	}
	missing := base
	missing.Restore = filepath.Join(dir, "nope")
	if _, err := New(context.Background(), missing, WithVsock(false)); !errdefs.IsNotFound(err) {
		t.Errorf("restore of a missing template: %v", err)
	}
	net := base
	net.Network = true
	if err := SaveTemplate(context.Background(), net, filepath.Join(dir, "s"), WithVsock(false)); !errdefs.IsInvalidArgument(err) {
		t.Errorf("SaveTemplate with user networking: %v", err)
	}
	usb := base
	usb.Restore, usb.DiskSlots, usb.DiskHotplugBus = kernel, 8, vm.DiskBusUSB
	if _, err := New(context.Background(), usb, WithVsock(false)); !errdefs.IsInvalidArgument(err) {
		t.Errorf("restore with USB disk slots: %v", err)
	}
	vs := base
	vs.Restore = kernel
	if _, err := New(context.Background(), vs, WithVsock(true)); !errdefs.IsNotImplemented(err) {
		t.Errorf("restore over vsock: %v", err)
	}
	ok := base
	ok.Restore, ok.DiskSlots, ok.DiskHotplugBus = kernel, 8, vm.DiskBusVirtio // a pod's: the template's slots
	m, err := New(context.Background(), ok, WithVsock(false))
	if err != nil {
		t.Fatal(err)
	}
	cmd := strings.Join(m.Command(), " ")
	if n := len(m.disks); n != vm.TemplateSlots {
		t.Errorf("%d disk slots, want the template's %d", n, vm.TemplateSlots)
	}
	for _, want := range []string{"-incoming defer", "vmgenid,guid=auto", vm.TemplateArg, "diskslot11", "nicslot3"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("restore command line lacks %q: %s", want, cmd)
		}
	}
}
