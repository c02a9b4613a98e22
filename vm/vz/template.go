package vz

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/containerd/errdefs"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/transport"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// wakeTimeout bounds the wake of a restored VM, when its ctx does not:
// its agent is set up already, it only has to answer.
const wakeTimeout = 30 * time.Second

// startRestored is Start for a VM restored from a template (TemplatePlan):
// restore (the VM comes back paused), resume, attach the task's disks as
// USB mass storage, and wake the agent on its wake port with fresh seed
// bytes and the host's clock (transport.WakeGate); only then does the
// agent accept on its other ports. Called with lifecycle held.
func (m *Machine) startRestored(ctx context.Context) error {
	fail := func(err error) error {
		m.finish(err)
		return err
	}
	if err := m.hv.Restore(m.tpl.Restore); err != nil {
		return fail(fmt.Errorf("vz: vm %s: restoring %s: %w", m.id, m.tpl.Restore, err))
	}
	go m.watch(m.hv.States())
	if err := m.hv.Resume(); err != nil {
		return m.abandon(fmt.Errorf("vz: vm %s: resuming the restored VM: %w", m.id, err))
	}
	for _, d := range m.tpl.Disks {
		if err := m.AddDisk(ctx, d); err != nil {
			return m.abandon(err)
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wakeTimeout)
		defer cancel()
	}
	conn, err := vm.DialRetry(ctx, m, agentapi.PortWake)
	if err != nil {
		return m.abandon(fmt.Errorf("vz: vm %s: the restored agent: %w", m.id, err))
	}
	defer conn.Close()
	w := transport.Wake{Time: time.Now()}
	if _, err := rand.Read(w.Seed[:]); err != nil {
		return m.abandon(fmt.Errorf("vz: wake seed: %w", err))
	}
	if err := transport.SendWake(ctx, conn, w); err != nil {
		return m.abandon(fmt.Errorf("vz: vm %s: %w", m.id, err))
	}
	m.log.Debug("vz: restored and woken")
	return nil
}

// abandon stops a restored VM that cannot serve and returns err; the
// caller boots its task cold.
func (m *Machine) abandon(err error) error {
	if m.hv.CanStop() {
		_ = m.hv.Stop()
	}
	select {
	case <-m.Done():
	case <-time.After(forceStopTimeout):
	}
	m.finish(err)
	return err
}

// saveTemplate saves the VM, booted in the template layout, to dst once its
// agent says it is idle, and stops it. The VM is paused for the save: VZ
// saves only a paused VM.
func (m *Machine) saveTemplate(ctx context.Context, dst string) error {
	if m.tpl == nil || m.tpl.Restore != "" {
		return fmt.Errorf("vz: vm %s: not a template: %w", m.id, errdefs.ErrFailedPrecondition)
	}
	conn, err := vm.DialRetry(ctx, m, agentapi.PortWake)
	if err != nil {
		return fmt.Errorf("vz: template %s: %w", m.id, err)
	}
	err = transport.AwaitIdleConn(ctx, conn)
	// The maker hangs up: a restored VM is woken on a connection of its
	// own (no vsock connection survives a save).
	conn.Close()
	if err != nil {
		return fmt.Errorf("vz: template %s: %w", m.id, err)
	}
	if err := m.hv.Pause(); err != nil {
		return fmt.Errorf("vz: template %s: pause: %w", m.id, err)
	}
	if err := m.hv.Save(dst); err != nil {
		return fmt.Errorf("vz: template %s: save: %w", m.id, err)
	}
	return nil
}

// TemplateLayout names what a template's devices are, for its cache key:
// a new layout makes new templates.
func TemplateLayout(cfg vm.Config) string {
	return fmt.Sprintf("vz-template-1:slots=%d", vm.TemplateSlots)
}
