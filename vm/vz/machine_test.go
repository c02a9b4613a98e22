package vz

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// fakeVM behaves like vz.VirtualMachine as the machine sees it.
type fakeVM struct {
	mu          sync.Mutex
	state       State
	states      chan State
	startErr    error
	obeyRequest bool // RequestStop powers the guest off
	stopCalls   int
	requests    int
	// connect, if set, answers Connect; else Connect blocks forever.
	connect func(port uint32) (net.Conn, error)
	// saved is what Save wrote, restored what Restore read.
	saved, restored string
	restoreErr      error
}

func (f *fakeVM) Save(path string) error {
	if f.State() != StatePaused {
		return errors.New("save: not paused")
	}
	f.mu.Lock()
	f.saved = path
	f.mu.Unlock()
	return nil
}

func (f *fakeVM) Restore(path string) error {
	if f.State() != StateStopped {
		return errors.New("restore: not stopped")
	}
	if f.restoreErr != nil {
		return f.restoreErr
	}
	f.mu.Lock()
	f.restored = path
	f.mu.Unlock()
	f.set(StateOther)
	f.set(StatePaused)
	return nil
}

func newFakeVM() *fakeVM { return &fakeVM{states: make(chan State, 16)} }

func (f *fakeVM) set(s State) {
	f.mu.Lock()
	f.state = s
	f.mu.Unlock()
	f.states <- s
}

func (f *fakeVM) Start() error {
	if f.startErr != nil {
		f.set(StateError)
		return f.startErr
	}
	f.set(StateOther)
	f.set(StateRunning)
	return nil
}

func (f *fakeVM) Pause() error {
	if f.State() != StateRunning {
		return errors.New("not running")
	}
	f.set(StatePaused)
	return nil
}

func (f *fakeVM) Resume() error {
	if f.State() != StatePaused {
		return errors.New("not paused")
	}
	f.set(StateRunning)
	return nil
}

func (f *fakeVM) Stop() error {
	f.mu.Lock()
	f.stopCalls++
	f.mu.Unlock()
	f.set(StateStopped)
	return nil
}

func (f *fakeVM) CanStop() bool        { s := f.State(); return s == StateRunning || s == StatePaused }
func (f *fakeVM) CanRequestStop() bool { return f.State() == StateRunning }

func (f *fakeVM) RequestStop() (bool, error) {
	f.mu.Lock()
	f.requests++
	obey := f.obeyRequest
	f.mu.Unlock()
	if obey {
		go f.set(StateStopped)
	}
	return true, nil
}

func (f *fakeVM) State() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state
}

func (f *fakeVM) States() <-chan State { return f.states }

func (f *fakeVM) Connect(port uint32) (net.Conn, error) {
	f.mu.Lock()
	connect := f.connect
	f.mu.Unlock()
	if connect == nil {
		select {}
	}
	return connect(port)
}

func (f *fakeVM) setConnect(connect func(uint32) (net.Conn, error)) {
	f.mu.Lock()
	f.connect = connect
	f.mu.Unlock()
}

func started(t *testing.T, f *fakeVM) *Machine {
	t.Helper()
	m := newMachine(context.Background(), "task1", f)
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return m
}

func waitDone(t *testing.T, m *Machine) {
	t.Helper()
	select {
	case <-m.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the machine is not done")
	}
}

func TestMachinePowerOff(t *testing.T) {
	f := newFakeVM()
	m := started(t, f)
	if m.Pid() != 0 {
		t.Errorf("pid %d", m.Pid())
	}
	select {
	case <-m.Done():
		t.Fatal("done while running")
	case <-time.After(50 * time.Millisecond):
	}
	if err := m.Start(context.Background()); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("second Start: %v", err)
	}
	f.set(StateStopped) // the guest powered off
	waitDone(t, m)
	if err := m.Err(); err != nil {
		t.Errorf("Err after a power-off: %v", err)
	}
	if err := m.Stop(context.Background()); err != nil {
		t.Errorf("Stop after a power-off: %v", err)
	}
	if f.stopCalls != 0 || f.requests != 0 {
		t.Errorf("Stop of a stopped VM called VZ: %d stops, %d requests", f.stopCalls, f.requests)
	}
}

func TestMachineError(t *testing.T) {
	f := newFakeVM()
	m := started(t, f)
	if m.Err() != nil {
		t.Error("Err before done")
	}
	f.set(StateError)
	waitDone(t, m)
	if m.Err() == nil {
		t.Error("no Err after VZ's error state")
	}
}

func TestMachineStartFails(t *testing.T) {
	f := newFakeVM()
	f.startErr = errors.New("no entitlement")
	m := newMachine(context.Background(), "task1", f)
	err := m.Start(context.Background())
	if err == nil {
		t.Fatal("Start succeeded")
	}
	waitDone(t, m)
	if !errors.Is(m.Err(), f.startErr) {
		t.Errorf("Err %v, want Start's", m.Err())
	}
}

func TestMachineStopRequested(t *testing.T) {
	f := newFakeVM()
	f.obeyRequest = true
	m := started(t, f)
	if err := m.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitDone(t, m)
	if f.requests != 1 || f.stopCalls != 0 {
		t.Errorf("%d requests, %d stops; want the request alone", f.requests, f.stopCalls)
	}
	if m.Err() != nil {
		t.Errorf("Err after Stop: %v", m.Err())
	}
}

// A guest that ignores the request is stopped when ctx ends.
func TestMachineStopForced(t *testing.T) {
	f := newFakeVM()
	m := started(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	begin := time.Now()
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d < 100*time.Millisecond {
		t.Errorf("stopped after %v, before ctx ended", d)
	}
	waitDone(t, m)
	if f.requests != 1 || f.stopCalls != 1 {
		t.Errorf("%d requests, %d stops; want one of each", f.requests, f.stopCalls)
	}
	if err := m.Start(context.Background()); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Start after Stop: %v", err)
	}
}

func TestMachineStopNotStarted(t *testing.T) {
	f := newFakeVM()
	m := newMachine(context.Background(), "task1", f)
	if err := m.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Start after Stop: %v", err)
	}
}

func TestMachinePauseResume(t *testing.T) {
	f := newFakeVM()
	m := newMachine(context.Background(), "task1", f)
	if err := m.Pause(context.Background()); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Pause before Start: %v", err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	// No dial into a paused VM.
	if _, err := m.Dial(context.Background(), 1024); !errdefs.IsUnavailable(err) {
		t.Errorf("Dial while paused: %v", err)
	}
	if err := m.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(context.Background()); err == nil {
		t.Error("Resume of a running VM succeeded")
	}
	f.set(StateStopped)
	waitDone(t, m)
	if err := m.Resume(context.Background()); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Resume after stop: %v", err)
	}
}

func TestMachineDial(t *testing.T) {
	f := newFakeVM()
	m := newMachine(context.Background(), "task1", f)
	if _, err := m.Dial(context.Background(), 1024); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Dial before Start: %v", err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}

	// Nothing listens: VZ says so.
	f.setConnect(func(uint32) (net.Conn, error) { return nil, errors.New("connection reset by peer") })
	if _, err := m.Dial(context.Background(), 1024); !errdefs.IsUnavailable(err) {
		t.Errorf("Dial with nobody listening: %v", err)
	}

	// The agent listens: the connection half-closes.
	peers := make(chan net.Conn, 1)
	f.setConnect(func(port uint32) (net.Conn, error) {
		if port != 1025 {
			t.Errorf("port %d", port)
		}
		a, b := unixPair(t)
		peers <- b
		return &fakeVZConn{rawConn: a, destinationPort: port}, nil
	})
	c, err := m.Dial(context.Background(), 1025)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(<-peers); err != nil || len(b) != 0 {
		t.Errorf("peer read %q, %v; want EOF", b, err)
	}
	c.Close()

	f.set(StateStopped)
	waitDone(t, m)
	if _, err := m.Dial(context.Background(), 1024); !errdefs.IsUnavailable(err) {
		t.Errorf("Dial after stop: %v", err)
	}
}

// VZ may never answer a connect while the guest has no listener: Dial
// gives up after connectTimeout, and a late connection is closed.
func TestMachineDialTimeout(t *testing.T) {
	f := newFakeVM()
	m := started(t, f)
	m.connectTimeout = 50 * time.Millisecond
	if _, err := m.Dial(context.Background(), 1024); !errdefs.IsUnavailable(err) {
		t.Errorf("Dial with no answer: %v", err)
	}

	release := make(chan struct{})
	late, peer := unixPair(t)
	f.setConnect(func(uint32) (net.Conn, error) {
		<-release
		return late, nil
	})
	if _, err := m.Dial(context.Background(), 1024); !errdefs.IsUnavailable(err) {
		t.Errorf("Dial with a late answer: %v", err)
	}
	close(release)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the late connection is open: read %v", err)
	}
}
