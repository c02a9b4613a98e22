package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// sandbox is the VM the shim's containers run in, and what they share: the
// agent connection, the network, the console, the clock and the events. It
// is booted by the first container (a pod's sandbox container, or the one
// task of an ungrouped shim) and ends with the last.
type sandbox struct {
	// id, bundle and namespace are those of the container that booted it;
	// the VM's state lives in that bundle.
	id, bundle, namespace string
	backend               string
	machine               vm.Machine
	client                *ttrpc.Client
	agent                 taskAPI.TTRPCTaskService
	bundles               agentapi.BundleService
	sys                   agentapi.SystemService
	console               string
	keepConsole           bool
	net                   *taskNet
	forwarders            []*portForwarder // the host's loopback (forward_ports), the namespace's
	// pod is the share of the host paths of the containers that join
	// the running VM; nil for a VM that no container can join.
	pod *podShare
	// trace logs the boot of the first container (bootTrace).
	trace *bootTrace
	// warm: the VM starts from a template (nil: it boots).
	warm *warmStart
	// stopConsole ends the bound on the console log (boundConsole).
	stopConsole context.CancelFunc

	mu         sync.Mutex
	stopped    bool // the VM was stopped on purpose
	containers int  // how many joined, for their disk ids
}

// vmDead reports whether the VM is gone.
func (sb *sandbox) vmDead() bool {
	select {
	case <-sb.machine.Done():
		return true
	default:
		return false
	}
}

// agentErr turns an agent error back into its errdefs class; a dead VM
// means the process is gone.
func (sb *sandbox) agentErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ttrpc.ErrClosed) {
		// The connection goes first when the guest dies: its VMM's exit
		// says why.
		select {
		case <-sb.machine.Done():
		case <-time.After(vmExitWait):
		}
	}
	if sb.vmDead() {
		return fmt.Errorf("the task's VM is gone (%v): %w", sb.machine.Err(), errdefs.ErrNotFound)
	}
	if errors.Is(err, ttrpc.ErrClosed) {
		return fmt.Errorf("the connection to the task's VM was lost: %w", errdefs.ErrUnavailable)
	}
	return errgrpc.ToNative(err)
}

// deleteInGuest is the agent's Delete of a process, bounded by
// guestAnswerTimeout.
func (sb *sandbox) deleteInGuest(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	resp, silent, err := askGuest(ctx, guestAnswerTimeout, func(ctx context.Context) (*taskAPI.DeleteResponse, error) {
		return sb.agent.Delete(ctx, r)
	})
	return resp, sb.answerErr(err, silent)
}

// askGuest makes one call to the agent with d to answer. silent tells that
// the guest let d pass, not that the caller's ctx ended: the caller decides
// what a silent guest costs it (an error, its own view, the VM).
func askGuest[R any](ctx context.Context, d time.Duration, call func(context.Context) (R, error)) (_ R, silent bool, _ error) {
	actx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	resp, err := call(actx)
	return resp, err != nil && ctx.Err() == nil && errors.Is(actx.Err(), context.DeadlineExceeded), err
}

// errNoAnswer is the error of a guest that let d pass without answering.
func errNoAnswer(d time.Duration) error {
	return fmt.Errorf("the guest did not answer within %s: %w", d, context.DeadlineExceeded)
}

// answerErr is agentErr for a call bounded by guestAnswerTimeout: a guest
// that let the time pass gets an error that says so.
func (sb *sandbox) answerErr(err error, silent bool) error {
	if silent && !sb.vmDead() {
		return errNoAnswer(guestAnswerTimeout)
	}
	return sb.agentErr(err)
}

// vmExitWait is how long an error of a lost connection waits for the VMM's
// exit, which tells the cause.
const vmExitWait = 2 * time.Second

// vmmPid is the VMM's host pid, 0 when the VM runs in the shim (VZ).
func (sb *sandbox) vmmPid() uint32 {
	if p := sb.machine.Pid(); p > 0 {
		return uint32(p)
	}
	return 0
}

// boot starts the VM of the first container c. A VMM that can run before
// its guest (vm.Launcher) is launched first: the prestart and createRuntime
// hooks see its pid, in the VM's network namespace, and the NICs of what
// they made there are added before the guest boots. Then it waits for the
// agent and sets the guest up.
func (sb *sandbox) boot(ctx context.Context, c *container, opts Options, setup *agentapi.SetupRequest) error {
	start := time.Now()
	if l, ok := sb.machine.(vm.Launcher); ok {
		l, err := sb.launch(ctx, l)
		if err != nil {
			return fmt.Errorf("starting the VM: %w", err)
		}
		if err := c.runCreateHooks(ctx); err != nil {
			return err
		}
		if err := sb.net.plug(ctx, l); err != nil {
			return fmt.Errorf("network: %w", err)
		}
		if err := l.Start(ctx); err != nil {
			return fmt.Errorf("starting the VM: %w", err)
		}
		sb.trace.mark(ctx, phaseVMMStarted)
	} else {
		if c.hooks.setsUpNetwork() {
			return fmt.Errorf("prestart and createRuntime hooks need a VMM process on the host, which this backend has not: %w", errdefs.ErrInvalidArgument)
		}
		if err := sb.start(ctx); err != nil {
			return fmt.Errorf("starting the VM: %w", err)
		}
		sb.trace.mark(ctx, phaseVMMStarted)
	}
	bootCtx, cancel := context.WithTimeout(ctx, time.Duration(opts.BootTimeout)*time.Second)
	conn, err := vm.DialRetry(bootCtx, sb.machine, agentapi.PortControl)
	cancel()
	if err != nil {
		// A restored agent that never answers: the next task must not
		// restore the same template.
		sb.warm.discard(ctx, err)
		tail := consoleTail(sb.console)
		if tail == "" && sb.warm == nil {
			// Not a line from the kernel: it never ran.
			tail = fmt.Sprintf(" (the guest printed nothing on its console: is %s a %s kernel?)", opts.Kernel, opts.Arch)
		}
		return fmt.Errorf("waiting for the agent: %w%s", err, tail)
	}
	sb.client = ttrpc.NewClient(conn, ttrpc.WithOnClose(sb.agentLost))
	sb.agent = taskAPI.NewTTRPCTaskClient(sb.client)
	sb.bundles = agentapi.NewBundleClient(sb.client)
	sb.sys = agentapi.NewSystemClient(sb.client)
	log.G(ctx).WithField("boot", time.Since(start)).Info("agent ready")
	// The guest answers from here on, or the task fails with a clear error:
	// a restored guest once accepted the connection and hung.
	if err := sb.trace.guestInfo(ctx, sb.sys); err != nil {
		sb.warm.discard(ctx, err)
		return fmt.Errorf("the agent connected, then: %w", err)
	}
	sb.trace.mark(ctx, phaseConnected)

	setup.Network = sb.net.guest()
	if w := sb.warm; w != nil && w.cold.Network {
		// The template asked for no lease (vz.net=static); this VM's NIC
		// has the task's address, which the agent gives a VZ NIC.
		setup.Dhcp = &agentapi.Dhcp{Mac: vm.NetworkMAC(w.cold.ID, w.cold.StateDir).String()}
	}
	if setup.ForwardPorts {
		sb.forwarders = append(sb.forwarders, newPortForwarder(sb.machine, nil))
	}
	if ns := sb.net.sandboxPath(); ns != "" {
		sb.forwarders = append(sb.forwarders, newPortForwarder(sb.machine, loopbackIn(ctx, ns)))
		setup.ForwardPorts = true
	}
	_, silent, err := askGuest(ctx, setupAnswerTimeout, func(ctx context.Context) (*emptypb.Empty, error) {
		return sb.sys.Setup(ctx, setup)
	})
	if silent {
		sb.warm.discard(ctx, err)
		return fmt.Errorf("setting up the guest: %w", errNoAnswer(setupAnswerTimeout))
	}
	if err != nil {
		return fmt.Errorf("setting up the guest: %w", errgrpc.ToNative(err))
	}
	sb.trace.mark(ctx, phaseSetUp)
	return nil
}

// launch launches the VMM. A VM restored from a template that fails to
// restore (a corrupt or stale template) is removed with its template and
// launched again, cold: the task never sees the template's failure.
func (sb *sandbox) launch(ctx context.Context, l vm.Launcher) (vm.Launcher, error) {
	err := l.Launch(ctx)
	if err == nil || sb.warm == nil {
		return l, err
	}
	m, err := sb.cold(ctx, err)
	if err != nil {
		return nil, err
	}
	cold, ok := m.(vm.Launcher)
	if !ok {
		return nil, fmt.Errorf("backend %s: %w", sb.backend, errdefs.ErrNotImplemented)
	}
	return cold, cold.Launch(ctx)
}

// cold replaces a VM restored from a template that failed (why) with one
// that boots, and removes the template.
func (sb *sandbox) cold(ctx context.Context, why error) (vm.Machine, error) {
	w := sb.warm
	sb.warm = nil
	w.discard(ctx, why)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	_ = sb.machine.Stop(sctx)
	cancel()
	m, err := newMachine(ctx, sb.backend, w.cold)
	if err != nil {
		return nil, err
	}
	sb.machine = m
	sb.trace.setWarm(false)
	return m, nil
}

// start starts a VMM that is not a vm.Launcher (VZ) and, like launch, boots
// cold a VM whose template failed to restore.
func (sb *sandbox) start(ctx context.Context) error {
	err := sb.machine.Start(ctx)
	if err == nil || sb.warm == nil {
		return err
	}
	m, err := sb.cold(ctx, err)
	if err != nil {
		return err
	}
	return m.Start(ctx)
}

// mapNamespace is the nsMapper of the containers that join the sandbox:
// CRI names its pod's namespaces by the sandbox task's pid, the VMM's
// (container.hostPid), as /proc/<pid>/ns/<type>; in the guest they are the
// namespaces of the first container's init process.
func (sb *sandbox) mapNamespace(first *container) nsMapper {
	return func(typ specs.LinuxNamespaceType, path string) (string, error) {
		host, guest := first.initPids()
		if host == 0 || guest == 0 {
			return "", nil
		}
		want := filepath.Join("/proc", strconv.Itoa(int(host)), "ns")
		name, ok := nsFiles[typ]
		if !ok || filepath.Dir(filepath.Clean(path)) != want || filepath.Base(path) != name {
			return "", nil
		}
		return filepath.Join("/proc", strconv.Itoa(int(guest)), "ns", name), nil
	}
}

// nsFiles are the files of /proc/<pid>/ns/ a container may join.
var nsFiles = map[specs.LinuxNamespaceType]string{
	specs.IPCNamespace:    "ipc",
	specs.UTSNamespace:    "uts",
	specs.PIDNamespace:    "pid",
	specs.MountNamespace:  "mnt",
	specs.CgroupNamespace: "cgroup",
	specs.UserNamespace:   "user",
}

// syncClock steps the guest clock to the host's now and then: a VM's clock
// falls behind while the host sleeps or the VM is paused, and the guest
// has no time source of its own to catch up from.
func (sb *sandbox) syncClock() {
	tick := time.NewTicker(clockSyncInterval)
	defer tick.Stop()
	for {
		select {
		case <-sb.machine.Done():
			return
		case <-tick.C:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := sb.sys.SetTime(ctx, &agentapi.SetTimeRequest{Time: protobuf.ToTimestamp(time.Now())}); err != nil && !sb.vmDead() {
				log.G(ctx).WithError(err).WithField("id", sb.id).Debug("setting the guest clock")
			}
			cancel()
		}
	}
}

// stop ends the VM: the agent is asked to power off, then the VM is
// stopped, then everything the shim made for it is removed. last, the
// container deleted last, is cleaned up (stdio, rootfs, poststop hooks) once
// the VM is gone. now: the agent powers off though last was not deleted in
// the guest (its init exited; Delete).
func (sb *sandbox) stop(ctx context.Context, last *container, now bool) {
	// Whatever the caller does meanwhile (containerd killed during a
	// Delete cancels it), what was made for the VM goes: a CNI DEL cut
	// short would leave the network's iptables rules behind.
	ctx = context.WithoutCancel(ctx)
	sb.mu.Lock()
	sb.stopped = true
	sb.mu.Unlock()
	var netDone chan error
	if sb.client != nil {
		if !sb.vmDead() {
			// The agent syncs, unmounts and powers off; forcing the VM
			// off before that could lose what the containers wrote.
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := sb.agent.Shutdown(sctx, &taskAPI.ShutdownRequest{ID: sb.id, Now: now})
			cancel()
			if err == nil {
				// No container runs any more: the network goes while
				// the guest powers off.
				netDone = make(chan error, 1)
				go func() { netDone <- sb.net.teardown(ctx) }()
			}
			select {
			case <-sb.machine.Done():
			case <-time.After(powerOffWait):
			}
		}
		sb.client.Close()
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	if err := sb.machine.Stop(sctx); err != nil {
		log.G(ctx).WithError(err).WithField("id", sb.id).Warn("stopping the VM")
	}
	cancel()
	sb.trace.mark(ctx, phaseVMGone)
	if sb.stopConsole != nil {
		sb.stopConsole()
	}
	for _, f := range sb.forwarders {
		f.close()
	}
	if last != nil {
		last.cleanup(ctx)
	}
	if sb.pod != nil && sb.pod.dir != "" {
		// Never RemoveAll: a bind mount left there is a host directory.
		if err := os.Remove(sb.pod.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.G(ctx).WithError(err).WithField("id", sb.id).Warn("removing the pod share")
		}
	}
	var err error
	if netDone != nil {
		err = <-netDone
	} else {
		err = sb.net.teardown(ctx)
	}
	if err != nil {
		log.G(ctx).WithError(err).WithField("id", sb.id).Warn("removing the task's network")
	}
	os.RemoveAll(filepath.Join(sb.bundle, "vm"))
	if !sb.keepConsole {
		os.Remove(sb.console)
	}
}

// agentLost runs when the connection to the agent closes. Unless the shim
// stopped the VM, the guest broke it (a bad frame, a transport it closed):
// nothing can reach the containers any more, and the VM is stopped so that
// their exits reach containerd (watchVM) rather than every call failing on
// a VM that runs on.
func (sb *sandbox) agentLost() {
	if sb.isStopped() || sb.vmDead() {
		return
	}
	sb.hung(context.Background(), "the connection to the agent was lost")
}

// hung stops a VM whose guest cannot be reached or does not answer, without
// the agent's help. It is not a stop on purpose: watchVM reports every
// process in it as exited (vmDeadStatus).
func (sb *sandbox) hung(ctx context.Context, why string) {
	log.G(ctx).WithField("id", sb.id).Errorf("%s: stopping the VM%s", why, consoleTail(sb.console))
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer cancel()
	if err := sb.machine.Stop(sctx); err != nil {
		log.G(ctx).WithError(err).WithField("id", sb.id).Warn("stopping the VM")
	}
}

// isStopped tells whether the VM was stopped on purpose.
func (sb *sandbox) isStopped() bool {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.stopped
}

// nextDiskPrefix names the disks of a container that joins: unique in the
// VM, short enough for a virtio-blk serial.
func (sb *sandbox) nextDiskPrefix() string {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	sb.containers++
	return fmt.Sprintf("c%d-rootfs", sb.containers)
}
