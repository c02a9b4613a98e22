package vz

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/vz-shim/containerd-shim-vz/transport"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// State is a VM's state as VZ reports it (vz.VirtualMachineState), reduced
// to what the machine acts on.
type State int

// States.
const (
	StateStopped State = iota
	StateRunning
	StatePaused
	StateError
	// StateOther is every transition state (starting, pausing, stopping...).
	StateOther
)

func (s State) String() string {
	switch s {
	case StateStopped:
		return "stopped"
	case StateRunning:
		return "running"
	case StatePaused:
		return "paused"
	case StateError:
		return "error"
	default:
		return "in transition"
	}
}

// hypervisor is the part of vz.VirtualMachine the machine uses. The darwin
// code adapts vz to it; the tests fake it, so that the machine's lifecycle
// is tested on any host.
type hypervisor interface {
	// Start, Pause, Resume and Stop block until VZ has done it.
	Start() error
	Pause() error
	Resume() error
	Stop() error
	CanStop() bool
	// RequestStop asks the guest to power off.
	RequestStop() (bool, error)
	CanRequestStop() bool
	State() State
	// States delivers every state change, buffered, from creation on.
	States() <-chan State
	// Connect connects to a vsock port of the guest. It may never
	// return while nothing listens there.
	Connect(port uint32) (net.Conn, error)
	// Save writes the state of the paused VM to path; Restore starts a
	// stopped VM from such a file, paused (macOS 14, Apple silicon).
	Save(path string) error
	Restore(path string) error
}

// Timeouts for VZ itself, not for the guest.
const (
	// requestStopTimeout bounds Stop's wait for the guest to obey
	// RequestStop when ctx does not: the agent powers off at the shim's
	// Shutdown, so a guest that still runs here is unlikely to listen.
	requestStopTimeout = 3 * time.Second
	// forceStopTimeout bounds the wait for the stopped state after Stop.
	forceStopTimeout = 5 * time.Second
	// connectTimeout bounds one vsock connect: vm.DialRetry retries.
	connectTimeout = 2 * time.Second
)

// Machine is a VZ micro-VM. It implements vm.Machine.
type Machine struct {
	id             string
	hv             hypervisor
	log            *log.Entry
	connectTimeout time.Duration

	// lifecycle serializes Start and Stop; mu guards the fields below.
	lifecycle sync.Mutex
	mu        sync.Mutex
	started   bool
	stopping  bool

	hot *hotplug // nil: disks cannot be added while it runs
	// tpl is set for the template layout: Start restores tpl.Restore
	// instead of booting when it is set.
	tpl *TemplatePlan

	*vm.Exit // Err: see finish
}

var _ vm.Machine = (*Machine)(nil)

func newMachine(ctx context.Context, id string, hv hypervisor) *Machine {
	return &Machine{
		id:             id,
		hv:             hv,
		log:            log.G(ctx).WithField("vm", id),
		connectTimeout: connectTimeout,
		Exit:           vm.NewExit(),
	}
}

// fromPlan is the machine of the plan p over hv, whose USB controller is
// bus (nil: none).
func fromPlan(ctx context.Context, p Plan, hv hypervisor, bus usbBus) *Machine {
	m := newMachine(ctx, p.ID, hv)
	m.hot = newHotplug(p.Hot, bus)
	m.tpl = p.Template
	return m
}

// Start boots the VM and returns once VZ runs it; the agent is not up yet.
// VZ cannot abandon a start, so ctx does not bound it.
func (m *Machine) Start(ctx context.Context) error {
	m.lifecycle.Lock()
	defer m.lifecycle.Unlock()
	m.mu.Lock()
	started, stopping := m.started, m.stopping
	m.started = true
	m.mu.Unlock()
	if started {
		return fmt.Errorf("vz: vm %s: already started: %w", m.id, errdefs.ErrFailedPrecondition)
	}
	if stopping {
		return fmt.Errorf("vz: vm %s: stopped: %w", m.id, errdefs.ErrFailedPrecondition)
	}
	if m.tpl != nil && m.tpl.Restore != "" {
		return m.startRestored(ctx)
	}
	if err := m.hv.Start(); err != nil {
		err = fmt.Errorf("vz: vm %s did not start: %w", m.id, err)
		m.finish(err)
		return err
	}
	// Watched only once it runs, so that a failed start is Start's error,
	// not a plain stop. Nothing is missed: States buffers every change.
	go m.watch(m.hv.States())
	m.log.Debug("vz: started")
	return nil
}

// watch closes done once the VM stopped for good: powered off (the agent's
// Shutdown, Stop, or a guest reboot, which VZ turns into a stop) or failed.
func (m *Machine) watch(states <-chan State) {
	for s := range states {
		m.log.WithField("state", s.String()).Debug("vz: state")
		switch s {
		case StateStopped:
			m.finish(nil)
			return
		case StateError:
			m.finish(errors.New("vz: the virtual machine stopped on an internal error of Virtualization.framework"))
			return
		}
	}
}

// finish records why the VM is gone and closes Done, once. VZ (through
// vz/v3) reports a guest reboot (a panic, with panic=-1) as a plain stop:
// the console log tells them apart.
func (m *Machine) finish(err error) {
	m.Set(err)
	m.hot.removeClones()
}

// Dial connects to port of the guest over the VM's virtio socket device.
// Until the agent listens it fails with errdefs.ErrUnavailable; see
// vm.DialRetry.
func (m *Machine) Dial(ctx context.Context, port uint32) (transport.Conn, error) {
	m.mu.Lock()
	started := m.started
	m.mu.Unlock()
	if !started {
		return nil, fmt.Errorf("vz: dial port %d: vm not started: %w", port, errdefs.ErrFailedPrecondition)
	}
	select {
	case <-m.Done():
		return nil, fmt.Errorf("vz: dial port %d: vm stopped: %w", port, errdefs.ErrUnavailable)
	default:
	}
	if s := m.hv.State(); s != StateRunning {
		return nil, fmt.Errorf("vz: dial port %d: vm %s: %w", port, s, errdefs.ErrUnavailable)
	}

	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := m.hv.Connect(port)
		ch <- result{c, err}
	}()
	cctx, cancel := context.WithTimeout(ctx, m.connectTimeout)
	defer cancel()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("vz: dial port %d: %v: %w", port, r.err, errdefs.ErrUnavailable)
		}
		c, err := withCloseWrite(r.conn)
		if err != nil {
			r.conn.Close()
			return nil, err
		}
		return c, nil
	case <-cctx.Done():
		// A connection that comes too late is nobody's: close it.
		go func() {
			if r := <-ch; r.conn != nil {
				r.conn.Close()
			}
		}()
		return nil, fmt.Errorf("vz: dial port %d: %v: %w", port, cctx.Err(), errdefs.ErrUnavailable)
	}
}

// Pause freezes the VM.
func (m *Machine) Pause(ctx context.Context) error {
	if err := m.running("pause"); err != nil {
		return err
	}
	if err := m.hv.Pause(); err != nil {
		return fmt.Errorf("vz: vm %s: pause: %w", m.id, err)
	}
	return nil
}

// Resume thaws it.
func (m *Machine) Resume(ctx context.Context) error {
	if err := m.running("resume"); err != nil {
		return err
	}
	if err := m.hv.Resume(); err != nil {
		return fmt.Errorf("vz: vm %s: resume: %w", m.id, err)
	}
	return nil
}

func (m *Machine) running(op string) error {
	m.mu.Lock()
	started := m.started
	m.mu.Unlock()
	if !started {
		return fmt.Errorf("vz: %s: vm not started: %w", op, errdefs.ErrFailedPrecondition)
	}
	select {
	case <-m.Done():
		return fmt.Errorf("vz: %s: vm stopped: %w", op, errdefs.ErrFailedPrecondition)
	default:
		return nil
	}
}

// Stop asks the guest to power off (RequestStop), waits for it until ctx
// ends (at most requestStopTimeout when ctx has no deadline), then forces
// the VM off. Like pulling the plug, the forced stop gives the guest no
// chance to sync its disks: shut the guest down through the agent first.
// Stop is idempotent and safe after the VM died.
func (m *Machine) Stop(ctx context.Context) error {
	m.lifecycle.Lock()
	defer m.lifecycle.Unlock()
	m.mu.Lock()
	m.stopping = true
	started := m.started
	m.mu.Unlock()
	if !started {
		return nil
	}
	select {
	case <-m.Done():
		return nil
	default:
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestStopTimeout)
		defer cancel()
	}
	// A paused VM (a saved template) cannot be asked: it is stopped.
	if m.hv.CanRequestStop() {
		if _, err := m.hv.RequestStop(); err != nil {
			m.log.WithError(err).Debug("vz: request stop")
		}
		select {
		case <-m.Done():
			return nil
		case <-ctx.Done():
			m.log.Debug("vz: the guest did not power off in time, stopping the VM")
		}
	}
	if m.hv.CanStop() {
		if err := m.hv.Stop(); err != nil {
			select {
			case <-m.Done(): // it stopped meanwhile
				return nil
			default:
			}
			return fmt.Errorf("vz: vm %s: stop: %w", m.id, err)
		}
	}
	select {
	case <-m.Done():
		return nil
	case <-time.After(forceStopTimeout):
		return fmt.Errorf("vz: vm %s: still %s after Stop: %w", m.id, m.hv.State(), errdefs.ErrUnavailable)
	}
}

// Pid is 0: the VM runs in the shim's own process.
func (m *Machine) Pid() int { return 0 }
