//go:build linux

// Package qemu runs a micro-VM with QEMU (vm.Machine on Linux hosts).
//
// QEMU boots the kernel and initramfs directly. The shim talks to it over two
// socketpairs it inherits: QMP (pause, resume, quit, and events: why the
// guest stopped, when the agent opened its port) and, without
// /dev/vhost-vsock, the host end of a virtio-serial port that carries a
// transport.Mux to the agent. With /dev/vhost-vsock the agent is reached
// over AF_VSOCK instead.
//
// StateDir holds only PidFile (written and locked by QEMU) and LogFile
// (QEMU's own stderr); Stop removes both, Cleanup does the same for a VM a
// dead shim left behind. The console log belongs to the caller.
package qemu

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/vz-shim/containerd-shim-vz/transport"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// Timeouts for QEMU itself, not for the guest.
const (
	// startTimeout bounds QEMU's start-up (until QMP answers) when the
	// caller's ctx does not.
	startTimeout = 30 * time.Second
	// quitTimeout bounds Stop's wait for QEMU to obey "quit" when ctx
	// does not: QEMU quits at once unless it is wedged.
	quitTimeout = 10 * time.Second
	// killTimeout bounds the wait for QEMU to exit after SIGKILL.
	killTimeout = 5 * time.Second
	// drainTimeout bounds the wait, after QEMU exited, for the last QMP
	// events (the SHUTDOWN reason) already in the socket.
	drainTimeout = 500 * time.Millisecond
	// tailBytes is how much of QEMU's stderr goes into errors.
	tailBytes = 2048
)

// Option changes how New sets up the machine.
type Option func(*options)

type options struct {
	vsock  *bool
	binary string
}

// WithVsock overrides the detection of /dev/vhost-vsock: true gives the VM a
// vhost-vsock-pci device, false the virtio-serial multiplexer.
func WithVsock(enabled bool) Option {
	return func(o *options) { o.vsock = &enabled }
}

// WithBinary runs path instead of qemu-system-x86_64 or qemu-system-aarch64
// from PATH. A wrapper script must exec QEMU: signals go to its pid alone.
func WithBinary(path string) Option {
	return func(o *options) { o.binary = path }
}

// Machine is a QEMU micro-VM. It implements vm.Machine.
type Machine struct {
	cfg    vm.Config
	vsock  bool
	cid    uint32
	binary string
	args   []string
	log    *log.Entry
	// template: the VM has the template layout (it is saved as one, or
	// restored from one: cfg.Restore); its agent port carries the wake
	// handshake before the mux.
	template bool
	// restoreDisks are hot-plugged once the template is restored.
	restoreDisks []vm.Disk

	// lifecycle serializes Start and Stop; mu guards the fields below
	// and is never held while waiting.
	lifecycle sync.Mutex
	mu        sync.Mutex
	started   bool                      // QEMU was launched (or tried to be)
	launched  bool                      // ... and answers on QMP
	running   bool                      // Start let the guest run
	nics      int                       // NIC slots taken
	disks     []string                  // hot-plugged disk ids by slot ("" free)
	unplugged map[string]chan struct{}  // RemoveDisk waiting for DEVICE_DELETED
	stamped   map[string]vm.StampedDisk // USB disks (vm.DiskBusUSB), by id
	stopping  bool                      // Stop was called
	killed    bool                      // we sent SIGKILL ...
	killErr   error                     // ... and this is Err then (nil from Stop)
	cmd       *exec.Cmd
	qmp       *qmpClient
	agent     net.Conn       // host end of the agent's virtio-serial port
	mux       *transport.Mux // over agent, from when the guest opened the port
	reason    string         // reason of QEMU's SHUTDOWN event

	// Err: nil after a guest power-off or Stop; otherwise QEMU's exit
	// status or signal and the tail of its stderr, or the guest's reboot
	// or panic. The console log's tail is the caller's to add.
	*vm.Exit
}

var (
	_ vm.Launcher       = (*Machine)(nil)
	_ vm.DiskHotplugger = (*Machine)(nil)
)

// New validates cfg and returns a machine that is not started yet. Errors
// are errdefs.ErrInvalidArgument and name the offending path or value.
// ctx carries the logger the machine keeps using.
func New(ctx context.Context, cfg vm.Config, opts ...Option) (*Machine, error) {
	return newMachine(ctx, cfg, false, opts...)
}

// newMachine is New, or with template set the machine SaveTemplate boots.
func newMachine(ctx context.Context, cfg vm.Config, template bool, opts ...Option) (*Machine, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	template = template || cfg.Restore != ""
	var restoreDisks []vm.Disk
	if template {
		if err := validateTemplate(&cfg); err != nil {
			return nil, err
		}
		// Hot-plugged after the restore, not on the command line.
		restoreDisks, cfg.Disks = cfg.Disks, nil
	}
	cfg, err := validate(cfg)
	if err != nil {
		return nil, err
	}
	if template {
		if err := validateDisks(restoreDisks); err != nil {
			return nil, err
		}
	}
	m := &Machine{
		cfg:          cfg,
		binary:       o.binary,
		log:          log.G(ctx).WithField("vm", cfg.ID),
		Exit:         vm.NewExit(),
		template:     template,
		restoreDisks: restoreDisks,

		disks:     make([]string, cfg.DiskSlots),
		unplugged: map[string]chan struct{}{},
		stamped:   map[string]vm.StampedDisk{},
	}
	if m.binary == "" {
		m.binary = qemuBinary(cfg.Arch)
	}
	if o.vsock != nil {
		m.vsock = *o.vsock
	} else {
		m.vsock = unix.Access(vhostVsock, unix.R_OK|unix.W_OK) == nil
	}
	if m.vsock && template {
		return nil, fmt.Errorf("qemu: warm start over vsock: %w", errdefs.ErrNotImplemented)
	}
	if m.vsock {
		// A random CID instead of a registry shared between shims: a
		// collision (odds ~n/2^32) fails Start with "Address already in
		// use" in the error.
		if m.cid, err = randomCID(); err != nil {
			return nil, err
		}
	}
	m.args = buildArgs(cfg, transportArgs{vsock: m.vsock, cid: m.cid, template: template})
	return m, nil
}

func randomCID() (uint32, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, fmt.Errorf("qemu: vsock cid: %w", err)
	}
	// 0-2 are reserved, 0xffffffff is VMADDR_CID_ANY.
	return 3 + binary.LittleEndian.Uint32(b[:])%(0xffffffff-3), nil
}

// Command is QEMU's argv. Start runs it with the QMP socket as fd 3 and, on
// the serial transport, the agent's socket as fd 4.
func (m *Machine) Command() []string {
	return append([]string{m.binary}, m.args...)
}

// CID is the guest's vsock context ID, 0 on the serial transport.
func (m *Machine) CID() uint32 { return m.cid }

// Start launches QEMU (unless Launch did) and lets the guest run. It
// returns once QEMU answers on QMP; the agent is not up yet. If QEMU fails
// to start, the error holds the tail of its stderr and of the console log,
// and the machine is done.
func (m *Machine) Start(ctx context.Context) error {
	m.lifecycle.Lock()
	defer m.lifecycle.Unlock()
	ctx, cancel := withStartTimeout(ctx)
	defer cancel()
	m.mu.Lock()
	launched, running := m.launched, m.running
	m.running = true
	m.mu.Unlock()
	if running {
		return fmt.Errorf("qemu: vm %s: already started: %w", m.cfg.ID, errdefs.ErrFailedPrecondition)
	}
	if !launched {
		if err := m.launchLocked(ctx); err != nil {
			return err
		}
	}
	if _, err := m.qmp.execute(ctx, "cont", nil); err != nil {
		err = m.startError(err)
		m.kill(err)
		return err
	}
	if m.cfg.Restore != "" {
		if err := m.wakeLocked(); err != nil {
			err = m.startError(err)
			m.kill(err)
			return err
		}
	}
	return nil
}

// withStartTimeout bounds ctx by startTimeout unless it has a deadline.
func withStartTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, startTimeout)
}

// Launch starts QEMU with the guest stopped (vm.Launcher): NICs can be
// added, and the VMM's pid is known, before the guest runs.
func (m *Machine) Launch(ctx context.Context) error {
	m.lifecycle.Lock()
	defer m.lifecycle.Unlock()
	ctx, cancel := withStartTimeout(ctx)
	defer cancel()
	return m.launchLocked(ctx)
}

// launchLocked runs QEMU, paused, and connects to QMP. Called with
// lifecycle held.
func (m *Machine) launchLocked(ctx context.Context) error {
	m.mu.Lock()
	started, stopping := m.started, m.stopping
	m.started = true
	m.mu.Unlock()
	if started {
		return fmt.Errorf("qemu: vm %s: already launched: %w", m.cfg.ID, errdefs.ErrFailedPrecondition)
	}
	if stopping {
		return fmt.Errorf("qemu: vm %s: stopped: %w", m.cfg.ID, errdefs.ErrFailedPrecondition)
	}
	if err := m.launch(); err != nil {
		m.Set(err)
		m.closeConns()
		m.removeFiles()
		return err
	}
	if err := m.qmp.handshake(ctx); err != nil {
		err = m.startError(err)
		m.kill(err)
		return err
	}
	m.mu.Lock()
	m.launched = true
	m.mu.Unlock()
	if m.cfg.Restore != "" {
		if err := m.restoreLocked(ctx); err != nil {
			err = m.startError(err)
			m.kill(err)
			return err
		}
	}
	return nil
}

// AddNIC plugs a virtio-net NIC backed by nic.Tap into the next free NIC
// slot of a launched machine whose guest does not run yet: the guest finds
// it at boot as if it had always been there.
func (m *Machine) AddNIC(ctx context.Context, nic vm.NIC) error {
	m.lifecycle.Lock()
	defer m.lifecycle.Unlock()
	m.mu.Lock()
	launched, running, slot := m.launched, m.running, m.nics
	m.mu.Unlock()
	if !launched || running {
		return fmt.Errorf("qemu: vm %s: NICs are added after Launch and before Start: %w", m.cfg.ID, errdefs.ErrFailedPrecondition)
	}
	if slot >= m.cfg.NICSlots {
		return fmt.Errorf("qemu: vm %s: NIC %s: all %d NIC slots are taken: %w", m.cfg.ID, nic.ID, m.cfg.NICSlots, errdefs.ErrResourceExhausted)
	}
	if len(nic.MAC) != 6 || nic.Tap == nil {
		return fmt.Errorf("qemu: NIC %s: needs a MAC address and a tap: %w", nic.ID, errdefs.ErrInvalidArgument)
	}
	if err := checkToken(nic.ID, maxDiskID); err != nil {
		return invalid("NIC id %q: %v", nic.ID, err)
	}
	fdName, netdev, dev := "tapfd-"+nic.ID, "netdev-"+nic.ID, "nic-"+nic.ID
	if _, err := m.qmp.executeFD(ctx, "getfd", map[string]any{"fdname": fdName}, nic.Tap); err != nil {
		return fmt.Errorf("qemu: vm %s: NIC %s: %w", m.cfg.ID, nic.ID, err)
	}
	if _, err := m.qmp.execute(ctx, "netdev_add", map[string]any{"type": "tap", "id": netdev, "fd": fdName, "vhost": false}); err != nil {
		return fmt.Errorf("qemu: vm %s: NIC %s: %w", m.cfg.ID, nic.ID, err)
	}
	dargs := map[string]any{
		"driver": "virtio-net-pci", "id": dev, "netdev": netdev, "bus": nicSlot(slot),
		"mac": nic.MAC.String(), "romfile": "",
	}
	if nic.MTU > 0 {
		dargs["host_mtu"] = nic.MTU
	}
	if _, err := m.qmp.execute(ctx, "device_add", dargs); err != nil {
		return fmt.Errorf("qemu: vm %s: NIC %s: %w", m.cfg.ID, nic.ID, err)
	}
	m.mu.Lock()
	m.nics++
	m.mu.Unlock()
	return nil
}

// launch starts QEMU, paused, with its sockets and log.
func (m *Machine) launch() error {
	bin, err := exec.LookPath(m.binary)
	if err != nil {
		return fmt.Errorf("qemu: %w: %w", err, errdefs.ErrNotFound)
	}
	logf, err := os.OpenFile(filepath.Join(m.cfg.StateDir, LogFile), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	defer logf.Close()

	// QEMU's ends of the sockets: closed here once it has them, so that
	// ours read end-of-file when it dies.
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	qmpConn, qmpFile, err := socketPair("qmp")
	if err != nil {
		return err
	}
	files = append(files, qmpFile)
	var agentConn net.Conn
	if !m.vsock {
		c, f, err := socketPair("agent")
		if err != nil {
			qmpConn.Close()
			return err
		}
		files = append(files, f)
		agentConn = c
	}

	cmd := exec.Command(bin, m.args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.ExtraFiles = files // fd 3 (qmpFD), fd 4 (agentFD)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Own process group: signals meant for the shim's group (a
		// terminal's ^C) do not reach QEMU; we stop it ourselves.
		Setpgid: true,
		// A shim that dies without Stop must not leave the VM running.
		Pdeathsig: syscall.SIGKILL,
	}
	m.mu.Lock()
	m.cmd = cmd
	m.agent = agentConn
	m.qmp = newQMP(qmpConn, m.onEvent)
	m.mu.Unlock()

	started := make(chan error, 1)
	go m.run(cmd, started)
	if err := <-started; err != nil {
		return fmt.Errorf("qemu: starting %s: %w", bin, err)
	}
	m.log.WithField("pid", cmd.Process.Pid).Debug("qemu started")
	return nil
}

// startError explains a failed start: if QEMU exited, its exit status and
// stderr say why; the console's tail follows.
func (m *Machine) startError(err error) error {
	select {
	case <-m.Done():
		err = m.Err()
	case <-time.After(drainTimeout):
		// QMP failed (or ctx ended) while QEMU still runs.
	}
	err = fmt.Errorf("qemu: vm %s did not start: %w", m.cfg.ID, err)
	if tail := logTail(m.cfg.ConsoleLog, tailBytes); tail != "" {
		err = fmt.Errorf("%w\nconsole (%s):\n%s", err, m.cfg.ConsoleLog, tail)
	}
	return err
}

// run starts QEMU and waits for it. Pdeathsig fires when the thread that
// forked the child exits, not the process; the runtime retires a thread
// whose goroutine exits while locked to it. So this goroutine holds its
// thread, which no other goroutine can then use or retire, until QEMU
// has exited.
//
// With a network namespace the thread enters it just for the fork, so that
// QEMU is born there, and goes back at once: the thread may be the
// process's main one, which the runtime never retires, and /proc/<pid>/ns
// shows that thread's namespace. A thread that cannot go back is never
// unlocked, so it dies with the goroutine.
func (m *Machine) run(cmd *exec.Cmd, started chan<- error) {
	runtime.LockOSThread()
	if m.cfg.NetNS == "" {
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
	} else {
		back, err := enterNetNS(m.cfg.NetNS)
		if err != nil {
			started <- err
			return
		}
		err = cmd.Start()
		if back() == nil {
			defer runtime.UnlockOSThread()
		}
		if err != nil {
			started <- err
			return
		}
	}
	started <- nil
	waitErr := cmd.Wait()

	// The SHUTDOWN event that says why QEMU quit is written before it
	// exits; let the reader drain the socket.
	select {
	case <-m.qmp.done:
	case <-time.After(drainTimeout):
	}
	m.mu.Lock()
	err, reason := m.exitError(waitErr), m.reason
	m.mu.Unlock()
	m.Set(err)
	m.log.WithError(err).WithField("reason", reason).Debug("qemu exited")
}

// exitError maps how QEMU ended to Err. Called with mu held.
func (m *Machine) exitError(waitErr error) error {
	var ee *exec.ExitError
	if waitErr != nil && !errors.As(waitErr, &ee) {
		return fmt.Errorf("qemu: waiting for pid %d: %w", m.cmd.Process.Pid, waitErr)
	}
	if waitErr != nil {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL && m.killed {
			return m.killErr // we killed it, and said why
		}
		err := fmt.Errorf("qemu: pid %d %v", m.cmd.Process.Pid, waitErr)
		if tail := logTail(filepath.Join(m.cfg.StateDir, LogFile), tailBytes); tail != "" {
			err = fmt.Errorf("%w: %s", err, tail)
		}
		return err
	}
	switch m.reason {
	case "", "guest-shutdown", "host-qmp-quit":
		// Powered off, or quit over QMP (by Stop, or someone we trust
		// as much: only we hold the QMP socket).
		return nil
	case "guest-reset":
		return errors.New("qemu: the guest rebooted: kernel panic, or its init exited (QEMU runs with -no-reboot)")
	case "guest-panic":
		return errors.New("qemu: the guest kernel panicked")
	default:
		return fmt.Errorf("qemu: stopped: %s", m.reason)
	}
}

// onEvent runs on the QMP reader goroutine.
func (m *Machine) onEvent(ev qmpEvent) {
	switch ev.Event {
	case "SHUTDOWN":
		var d struct {
			Reason string `json:"reason"`
		}
		_ = json.Unmarshal(ev.Data, &d)
		m.mu.Lock()
		m.reason = d.Reason
		m.mu.Unlock()
		m.log.WithField("reason", d.Reason).Debug("qemu: shutdown")
	case "VSERPORT_CHANGE":
		var d struct {
			ID   string `json:"id"`
			Open bool   `json:"open"`
		}
		if json.Unmarshal(ev.Data, &d) != nil || d.ID != agentPortDev {
			return
		}
		m.agentPortChanged(d.Open)
	case "DEVICE_DELETED":
		m.deviceDeleted(ev.Data)
	case "STOP", "RESUME":
		m.log.Debugf("qemu: %s", ev.Event)
	}
}

// agentPortChanged starts the mux when the agent opens its end of the port.
// The mux must not run earlier: its keepalive would time out against a
// guest that is still booting, and a dead session cannot be restarted.
func (m *Machine) agentPortChanged(open bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.agent == nil {
		return
	}
	if !open {
		// The agent closed the port: it is gone (or the guest is
		// powering off). Closing the byte stream under the mux fails
		// its streams now, with ErrPeerGone, rather than after a
		// keepalive timeout.
		m.log.Debug("qemu: the guest closed the agent port")
		m.agent.Close()
		return
	}
	if m.template {
		// The wake handshake comes first (SaveTemplate, wakeLocked).
		return
	}
	if m.mux != nil {
		m.log.Warn("qemu: the guest reopened the agent port; not supported")
		return
	}
	// No keepalive from the host: a paused guest cannot answer it, and
	// QEMU's exit or the port's closing tell of a dead guest.
	mux, err := transport.NewMux(log.WithLogger(context.Background(), m.log), m.agent, false, transport.WithoutKeepAlive())
	if err != nil {
		m.log.WithError(err).Error("qemu: starting the agent mux")
		return
	}
	m.mux = mux
	m.log.Debug("qemu: agent port open")
}

// Dial opens a stream to port of the guest. Until the agent's transport is
// up it fails with errdefs.ErrUnavailable (serial: the agent has not opened
// its port yet) or errdefs.ErrNotFound (nothing listens on port yet); see
// vm.DialRetry.
func (m *Machine) Dial(ctx context.Context, port uint32) (transport.Conn, error) {
	m.mu.Lock()
	started, mux := m.started, m.mux
	m.mu.Unlock()
	if !started {
		return nil, fmt.Errorf("qemu: dial port %d: vm not started: %w", port, errdefs.ErrFailedPrecondition)
	}
	select {
	case <-m.Done():
		return nil, fmt.Errorf("qemu: dial port %d: vm stopped: %w", port, errdefs.ErrUnavailable)
	default:
	}
	if m.vsock {
		c, err := transport.Vsock{CID: m.cid}.Dial(ctx, port)
		if err != nil && errors.Is(err, unix.ETIMEDOUT) {
			// The guest has no vsock driver yet: nobody answered.
			return nil, fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
		}
		return c, err
	}
	if mux == nil {
		return nil, fmt.Errorf("qemu: dial port %d: the guest agent has not opened its port yet: %w", port, errdefs.ErrUnavailable)
	}
	return mux.Dial(ctx, port)
}

// Pause freezes the guest's vCPUs (QMP stop).
func (m *Machine) Pause(ctx context.Context) error {
	return m.command(ctx, "stop")
}

// Resume thaws them (QMP cont).
func (m *Machine) Resume(ctx context.Context) error {
	return m.command(ctx, "cont")
}

func (m *Machine) command(ctx context.Context, cmd string) error {
	m.mu.Lock()
	q := m.qmp
	m.mu.Unlock()
	if q == nil {
		return fmt.Errorf("qemu: %s: vm not started: %w", cmd, errdefs.ErrFailedPrecondition)
	}
	select {
	case <-m.Done():
		return fmt.Errorf("qemu: %s: vm stopped: %w", cmd, errdefs.ErrFailedPrecondition)
	default:
	}
	if _, err := q.execute(ctx, cmd, nil); err != nil {
		return fmt.Errorf("qemu: vm %s: %w", m.cfg.ID, err)
	}
	return nil
}

// Stop makes QEMU quit (QMP quit), waits for it until ctx ends (at most
// quitTimeout), then kills it, and removes its files from StateDir. It does
// not give the guest a chance to sync its disks: shut the guest down
// through the agent first, and use Stop to end QEMU. Stop is idempotent
// and safe after QEMU died; call it then too, for the files.
func (m *Machine) Stop(ctx context.Context) error {
	m.lifecycle.Lock()
	defer m.lifecycle.Unlock()
	m.mu.Lock()
	m.stopping = true
	started, q := m.started, m.qmp
	m.mu.Unlock()
	if !started {
		return m.removeFiles()
	}
	select {
	case <-m.Done():
	default:
		qctx, cancel := context.WithTimeout(ctx, quitTimeout)
		defer cancel()
		if _, err := q.execute(qctx, "quit", nil); err != nil {
			m.log.WithError(err).Debug("qemu: quit")
		}
		select {
		case <-m.Done():
		case <-qctx.Done():
			m.log.Warn("qemu: did not quit in time, killing it")
		}
	}
	return m.kill(nil)
}

// kill kills QEMU if it still runs (Err is then why), waits for its exit,
// and releases everything the machine holds.
func (m *Machine) kill(why error) error {
	m.mu.Lock()
	cmd := m.cmd
	m.mu.Unlock()
	select {
	case <-m.Done():
	default:
		m.mu.Lock()
		m.killed, m.killErr = true, why
		m.mu.Unlock()
		// Through the process's pidfd: once Wait has reaped QEMU this is
		// a no-op, never a signal to whoever got its pid since.
		_ = cmd.Process.Kill()
		select {
		case <-m.Done():
		case <-time.After(killTimeout):
			return fmt.Errorf("qemu: pid %d did not exit after SIGKILL", cmd.Process.Pid)
		}
	}
	m.closeConns()
	return m.removeFiles()
}

func (m *Machine) closeConns() {
	m.mu.Lock()
	mux, agent, q := m.mux, m.agent, m.qmp
	m.mu.Unlock()
	if mux != nil {
		mux.Close() // closes agent
	} else if agent != nil {
		agent.Close()
	}
	if q != nil {
		q.close()
	}
}

// removeFiles removes what QEMU made in StateDir, and the stamped clones of
// USB disks. The console log stays.
func (m *Machine) removeFiles() error {
	m.removeStamped()
	var errs []error
	for _, name := range []string{PidFile, LogFile} {
		if err := os.Remove(filepath.Join(m.cfg.StateDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("qemu: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Pid is QEMU's process id, 0 before Start.
func (m *Machine) Pid() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil || m.cmd.Process == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// enterNetNS moves the calling thread into the network namespace at path;
// back returns it to the one it was in.
func enterNetNS(path string) (back func() error, err error) {
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("own network namespace: %w", err)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(orig)
		return nil, fmt.Errorf("network namespace: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		unix.Close(orig)
		return nil, fmt.Errorf("entering network namespace %s: %w", path, err)
	}
	return func() error {
		defer unix.Close(orig)
		return unix.Setns(orig, unix.CLONE_NEWNET)
	}, nil
}

// socketPair returns our end of a unix stream socketpair as a net.Conn and
// QEMU's end as a file to pass it.
func socketPair(name string) (net.Conn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("qemu: %s socketpair: %w", name, err)
	}
	local := os.NewFile(uintptr(fds[0]), name)
	defer local.Close() // FileConn dups it
	conn, err := net.FileConn(local)
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("qemu: %s socketpair: %w", name, err)
	}
	return conn, os.NewFile(uintptr(fds[1]), name+"-qemu"), nil
}
