//go:build linux

package qemu

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/vz-shim/containerd-shim-vz/transport"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// Warm start (DESIGN.md §11): SaveTemplate boots a VM with the template
// layout (fixed hot-plug slots, a VM generation ID device, no task devices)
// until its agent waits idle, and migrates it to a file with the guest
// stopped. A Config with Restore starts QEMU with the same layout and
// "-incoming defer", loads that file (migrate-incoming over a passed fd:
// the sandbox forbids exec:), hot-plugs the task's disks and shares while
// the guest is still stopped, and Start wakes the agent
// (transport.Wake). QEMU gives the restored VM a new generation ID, which
// makes Linux reseed its generator; the Wake's seed does the same where
// there is no such device (arm64 without ACPI).

// migrateFD names the state file's descriptor in QMP (getfd).
const migrateFD = "vz-template"

// migratePoll is how often query-migrate is asked while a save or a load
// runs; both take well under a second for an idle guest.
const migratePoll = 5 * time.Millisecond

// SaveTemplate boots cfg as a template and writes its state to dst, which
// it creates. cfg has no disks, shares, NICs or network: a restored VM
// gets those. ctx bounds the boot and the save; the VM is gone when it
// returns.
func SaveTemplate(ctx context.Context, cfg vm.Config, dst string, opts ...Option) (retErr error) {
	if len(cfg.Disks) > 0 || len(cfg.Shares) > 0 || cfg.Network || cfg.NetNS != "" || cfg.DiskSlots > 0 || cfg.NICSlots > 0 || cfg.Restore != "" {
		return invalid("a template has no disks, shares, network or slots of its own")
	}
	m, err := newMachine(ctx, cfg, true, opts...)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), quitTimeout)
		defer cancel()
		if err := m.Stop(sctx); err != nil && retErr == nil {
			retErr = err
		}
	}()
	if err := m.Start(ctx); err != nil {
		return err
	}
	if err := m.awaitIdle(ctx); err != nil {
		return err
	}
	if _, err := m.qmp.execute(ctx, "stop", nil); err != nil {
		return fmt.Errorf("qemu: template %s: %w", cfg.ID, err)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("qemu: template: %w", err)
	}
	defer f.Close()
	// The default bandwidth limit (128 MiB/s) would make the save of a
	// guest's touched memory take most of a second.
	if _, err := m.qmp.execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(64) << 30}); err != nil {
		return fmt.Errorf("qemu: template %s: %w", cfg.ID, err)
	}
	if _, err := m.qmp.executeFD(ctx, "getfd", map[string]any{"fdname": migrateFD}, f); err != nil {
		return fmt.Errorf("qemu: template %s: %w", cfg.ID, err)
	}
	if _, err := m.qmp.execute(ctx, "migrate", map[string]any{"uri": "fd:" + migrateFD}); err != nil {
		return fmt.Errorf("qemu: template %s: %w", cfg.ID, err)
	}
	if err := m.awaitMigration(ctx); err != nil {
		return fmt.Errorf("qemu: saving template %s: %w", cfg.ID, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("qemu: template: %w", err)
	}
	return f.Close()
}

// awaitIdle reads the template agent's idle mark from the agent port.
func (m *Machine) awaitIdle(ctx context.Context) error {
	if m.agent == nil {
		return fmt.Errorf("qemu: templates need the serial transport: %w", errdefs.ErrNotImplemented)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = m.agent.SetReadDeadline(dl)
		defer m.agent.SetReadDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { _ = m.agent.SetReadDeadline(time.Now()) })
	defer stop()
	if err := transport.AwaitIdle(m.agent); err != nil {
		return m.startError(err)
	}
	return nil
}

// awaitMigration polls query-migrate until the save or load ended.
func (m *Machine) awaitMigration(ctx context.Context) error {
	for {
		ret, err := m.qmp.execute(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(ret, &st); err != nil {
			return fmt.Errorf("query-migrate: %w", err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-m.Done():
			return fmt.Errorf("qemu exited during the migration: %w", m.Err())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(migratePoll):
		}
	}
}

// restoreLocked loads the template into a launched QEMU and attaches the
// task's disks and shares; the guest stays stopped. Called with lifecycle
// held.
func (m *Machine) restoreLocked(ctx context.Context) error {
	f, err := os.Open(m.cfg.Restore)
	if err != nil {
		return fmt.Errorf("qemu: template: %w", err)
	}
	defer f.Close()
	if _, err := m.qmp.executeFD(ctx, "getfd", map[string]any{"fdname": migrateFD}, f); err != nil {
		return err
	}
	if _, err := m.qmp.execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + migrateFD}); err != nil {
		return err
	}
	if err := m.awaitMigration(ctx); err != nil {
		return fmt.Errorf("restoring %s: %w", m.cfg.Restore, err)
	}
	for _, d := range m.restoreDisks {
		if err := m.addDisk(ctx, d); err != nil {
			return err
		}
	}
	for i, s := range m.cfg.Shares {
		slot, err := m.reserveDiskSlot(shareDevID(i))
		if err != nil {
			return err
		}
		dev := map[string]any{
			"driver": "virtio-9p-pci", "id": shareDevID(i), "fsdev": fsdevID(i),
			"mount_tag": s.Tag, "bus": diskSlot(slot),
		}
		if _, err := m.qmp.execute(ctx, "device_add", dev); err != nil {
			return fmt.Errorf("qemu: vm %s: share %s: %w", m.cfg.ID, s.Tag, err)
		}
	}
	if m.cfg.Network {
		// The template has no NIC (it would give every restored VM its
		// address); this one's has the task's, and the agent asks for a
		// lease in Setup (agent.ConfigureDHCP).
		m.mu.Lock()
		slot := m.nics
		m.nics++
		m.mu.Unlock()
		dev := map[string]any{
			"driver": "virtio-net-pci", "id": "nic-" + userNetdev, "netdev": userNetdev, "bus": nicSlot(slot),
			"mac": vm.NetworkMAC(m.cfg.ID, m.cfg.StateDir).String(), "romfile": "",
		}
		if _, err := m.qmp.execute(ctx, "device_add", dev); err != nil {
			return fmt.Errorf("qemu: vm %s: user network NIC: %w", m.cfg.ID, err)
		}
	}
	return nil
}

// wakeLocked sends the restored guest its Wake and starts the mux over
// the agent port. Called with lifecycle held, after "cont".
func (m *Machine) wakeLocked() error {
	w := transport.Wake{Time: time.Now()}
	if _, err := rand.Read(w.Seed[:]); err != nil {
		return fmt.Errorf("qemu: wake seed: %w", err)
	}
	b, _ := w.MarshalBinary()
	if _, err := m.agent.Write(b); err != nil {
		return fmt.Errorf("qemu: waking the restored agent: %w", err)
	}
	mux, err := transport.NewMux(log.WithLogger(context.Background(), m.log), m.agent, false, transport.WithoutKeepAlive())
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.mux = mux
	m.mu.Unlock()
	return nil
}

// userNetdev is the netdev of Config.Network.
const userNetdev = "net0"

func shareDevID(i int) string { return fmt.Sprintf("share%d", i) }
func fsdevID(i int) string    { return fmt.Sprintf("fs%d", i) }

// TemplateLayout names this backend's template layout and the QEMU that
// saves and restores it: part of a template's key, since another QEMU
// binary may not load what this one saved.
func TemplateLayout(cfg vm.Config, opts ...Option) (string, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	bin := o.binary
	if bin == "" {
		bin = qemuBinary(cfg.Arch)
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("qemu: %w: %w", err, errdefs.ErrNotFound)
	}
	if path, err = filepath.EvalSymlinks(path); err != nil {
		return "", fmt.Errorf("qemu: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("qemu: %w", err)
	}
	return fmt.Sprintf("qemu-template-1 %s %d %d slots=%d/%d", path, fi.Size(), fi.ModTime().UnixNano(), vm.TemplateSlots, vm.TemplateNICSlots), nil
}
