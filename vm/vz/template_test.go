package vz

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/transport"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// pipeListener is the guest's wake port over the fake's Connect.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *pipeListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *pipeListener) Addr() net.Addr { return &net.UnixAddr{Name: "wake", Net: "unix"} }

// guestAgent runs the agent's side of the wake port (transport.WakeGate)
// behind f's Connect, and returns the wakes it got.
func guestAgent(t *testing.T, f *fakeVM) (*transport.WakeGate, chan transport.Wake) {
	t.Helper()
	ln := newPipeListener()
	t.Cleanup(func() { ln.Close() })
	woke := make(chan transport.Wake, 4)
	g := transport.NewWakeGate(ln, func(w transport.Wake) error { woke <- w; return nil })
	f.setConnect(func(port uint32) (net.Conn, error) {
		if port != agentapi.PortWake {
			return nil, errors.New("connection refused")
		}
		host, guest := unixPair(t)
		select {
		case ln.conns <- guest:
			return host, nil
		case <-ln.done:
			return nil, errors.New("connection refused")
		}
	})
	return g, woke
}

// templatePlan is the plan of a template (restore "") or of a VM restored
// from one, with a disk of the task's.
func templatePlan(t *testing.T, restore string) (Plan, *fakeUSB) {
	t.Helper()
	cfg := fakeConfig(t)
	cfg.Shares, cfg.Network = nil, false
	if restore == "" {
		cfg.Disks = nil
	} else {
		cfg.Restore = restore
		for _, d := range cfg.Disks {
			// Room for the stamp the guest finds it by.
			if err := os.WriteFile(d.Path, make([]byte, 64<<10), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	host := testHost
	host.USB = true
	var p Plan
	var err error
	if restore == "" {
		p, err = NewTemplatePlan(cfg, host)
	} else {
		p, err = NewPlan(cfg, host)
	}
	if err != nil {
		t.Fatal(err)
	}
	return p, &fakeUSB{}
}

// TestTemplateSave: a template VM boots, is saved once its agent says it
// is idle (paused: VZ saves only a paused VM), and the maker hangs up.
func TestTemplateSave(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, bus := templatePlan(t, "")
	f := newFakeVM()
	f.obeyRequest = true
	g, woke := guestAgent(t, f)
	m := fromPlan(ctx, p, f, bus)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	saved := make(chan error, 1)
	dst := filepath.Join(t.TempDir(), "state")
	go func() { saved <- m.saveTemplate(ctx, dst) }()
	select {
	case err := <-saved:
		t.Fatalf("saved before the agent was idle: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	g.Idle()
	if err := <-saved; err != nil {
		t.Fatalf("saveTemplate: %v", err)
	}
	if f.saved != dst || f.State() != StatePaused {
		t.Errorf("saved %q in state %s, want %q paused", f.saved, f.State(), dst)
	}
	select {
	case w := <-woke:
		t.Errorf("the template was woken: %+v", w)
	default:
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestTemplateRestore: a restored VM is resumed, gets its task's disks
// (USB, stamped), and its agent is woken with fresh seed bytes and the
// host's clock before Start returns.
func TestTemplateRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	state := filepath.Join(t.TempDir(), "state")
	if err := os.WriteFile(state, []byte("saved"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, bus := templatePlan(t, state)
	if len(p.Template.Disks) == 0 || len(p.Disks) != 0 || !p.SharesDevice() || p.MAC == nil || p.Hot.Slots != vm.TemplateSlots {
		t.Fatalf("restore plan: %+v", p)
	}
	f := newFakeVM()
	f.obeyRequest = true
	g, woke := guestAgent(t, f)
	g.Idle() // as it was saved
	m := fromPlan(ctx, p, f, bus)
	before := time.Now()
	if err := m.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if f.restored != state || f.State() != StateRunning {
		t.Errorf("restored %q, state %s", f.restored, f.State())
	}
	if len(bus.attached) != len(p.Template.Disks) {
		t.Errorf("%d disks attached, want the task's %d", len(bus.attached), len(p.Template.Disks))
	}
	select {
	case w := <-woke:
		if w.Time.Before(before) || w.Seed == ([transport.WakeSeedLen]byte{}) {
			t.Errorf("wake %+v: want the host's clock and seed bytes", w)
		}
	default:
		t.Error("Start returned before the agent was woken")
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	waitDone(t, m)
}

// TestTemplateRestoreFails: a template VZ refuses, or an agent that never
// wakes, fail Start with the reason; the VM is stopped (the shim boots the
// task cold).
func TestTemplateRestoreFails(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	if err := os.WriteFile(state, []byte("saved"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Run("refused", func(t *testing.T) {
		p, bus := templatePlan(t, state)
		f := newFakeVM()
		f.restoreErr = errors.New("VZErrorDomain Code=12: incompatible configuration")
		m := fromPlan(context.Background(), p, f, bus)
		if err := m.Start(context.Background()); !errors.Is(err, f.restoreErr) {
			t.Errorf("Start: %v, want the restore's error", err)
		}
		waitDone(t, m)
	})
	t.Run("no wake", func(t *testing.T) {
		p, bus := templatePlan(t, state)
		f := newFakeVM()
		guestAgent(t, f) // never idle: the agent does not answer
		m := fromPlan(context.Background(), p, f, bus)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if err := m.Start(ctx); err == nil {
			t.Fatal("Start succeeded without a wake")
		}
		waitDone(t, m)
		if f.State() != StateStopped {
			t.Errorf("state %s, want stopped", f.State())
		}
	})
}

// TestTemplatePlan: the template layout is the same whatever the task's
// devices, and is refused where VZ cannot do it.
func TestTemplatePlan(t *testing.T) {
	cfg := fakeConfig(t)
	host := testHost
	host.USB = true
	if _, err := NewTemplatePlan(cfg, host); !errdefs.IsInvalidArgument(err) {
		t.Errorf("a template with the task's disks and shares: %v", err)
	}
	cfg.Disks, cfg.Shares, cfg.Network = nil, nil, false
	p, err := NewTemplatePlan(cfg, host)
	if err != nil {
		t.Fatal(err)
	}
	if p.Template == nil || p.Template.Restore != "" || !p.SharesDevice() || p.MAC == nil || p.Hot.Slots != vm.TemplateSlots || len(p.Disks) != 0 {
		t.Errorf("template plan: %+v", p)
	}
	noUSB := testHost
	if _, err := NewTemplatePlan(cfg, noUSB); !errdefs.IsNotImplemented(err) {
		t.Errorf("before macOS 15: %v, want not implemented", err)
	}
	cfg.Restore = filepath.Join(t.TempDir(), "missing")
	if _, err := NewPlan(cfg, host); !errdefs.IsNotFound(err) {
		t.Errorf("restore of a missing template: %v", err)
	}
}
