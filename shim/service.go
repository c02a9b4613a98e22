package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

const (
	// vmDeadStatus is the exit status of processes whose VM died under
	// them: like runc's for a process that vanished.
	vmDeadStatus = 255
	// exitDrainTimeout bounds how long an exit waits for its output to
	// reach containerd.
	exitDrainTimeout = 10 * time.Second
	// powerOffWait is how long the agent gets to power the VM off by
	// itself; stopTimeout then bounds the VMM's own stop before a kill.
	powerOffWait = 3 * time.Second
	stopTimeout  = 5 * time.Second
	// clockSyncInterval is how often the guest clock is stepped to the
	// host's.
	clockSyncInterval = time.Minute
)

// NewTaskService is the shim's task service: containerd's task API, served
// by booting one micro-VM per task and forwarding to the agent inside.
func NewTaskService(ctx context.Context, publisher shim.Publisher, sd shutdown.Service) (taskAPI.TTRPCTaskService, error) {
	s := &service{publisher: publisher, sd: sd}
	sd.RegisterCallback(func(context.Context) error {
		s.stopVM()
		return nil
	})
	return s, nil
}

// RegisterTTRPC makes the service a shim plugin's TTRPCService.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	return nil
}

type service struct {
	publisher shim.Publisher
	sd        shutdown.Service

	// mu guards t; lifecycle serialises Create and Delete of the task.
	mu        sync.Mutex
	lifecycle sync.Mutex
	t         *vmTask
}

var _ taskAPI.TTRPCTaskService = (*service)(nil)

// vmTask is the shim's one task, its VM and the agent that runs it.
type vmTask struct {
	id, bundle, namespace string
	machine               vm.Machine
	client                *ttrpc.Client
	agent                 taskAPI.TTRPCTaskService
	bundles               agentapi.BundleService
	console               string
	keepConsole           bool
	hostRootfs            string // the snapshot the shim mounted on the host
	net                   *taskNet
	forwarder             *portForwarder // nil without forward_ports
	hooks                 hostHooks
	spec                  *specs.Spec

	mu      sync.Mutex
	procs   map[string]*hostProcess // "" is init
	stopped bool                    // the VM was stopped on purpose
}

// hostProcess is what the shim keeps of a process in the guest.
type hostProcess struct {
	execID                string
	stdin, stdout, stderr string
	terminal              bool
	io                    *hostIO

	mu       sync.Mutex
	pid      uint32 // what containerd sees (vmTask.hostPid)
	guestPid uint32
	exited   chan struct{}
	status   uint32
	exitedAt time.Time
}

// exit records the exit once; it reports whether this call did.
func (p *hostProcess) exit(status uint32, at time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.exited:
		return false
	default:
	}
	p.status, p.exitedAt = status, at
	close(p.exited)
	return true
}

func (p *hostProcess) result() (uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status, p.exitedAt
}

// pids is the process's pid as containerd knows it and in the guest.
func (p *hostProcess) pids() (host, guest uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid, p.guestPid
}

func (p *hostProcess) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

func (s *service) task(id string) (*vmTask, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.t == nil || s.t.id != id {
		return nil, fmt.Errorf("task %q: %w", id, errdefs.ErrNotFound)
	}
	return s.t, nil
}

// taskProcess finds a process of the shim's task.
func (s *service) taskProcess(id, execID string) (*vmTask, *hostProcess, error) {
	t, err := s.task(id)
	if err != nil {
		return nil, nil, err
	}
	p, err := t.process(execID)
	if err != nil {
		return nil, nil, err
	}
	return t, p, nil
}

func (t *vmTask) process(execID string) (*hostProcess, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.procs[execID]
	if p == nil {
		return nil, fmt.Errorf("process %q of task %q: %w", execID, t.id, errdefs.ErrNotFound)
	}
	return p, nil
}

// vmDead reports whether the VM is gone.
func (t *vmTask) vmDead() bool {
	select {
	case <-t.machine.Done():
		return true
	default:
		return false
	}
}

// agentErr turns an agent error back into its errdefs class; a dead VM
// means the process is gone.
func (t *vmTask) agentErr(err error) error {
	if err == nil {
		return nil
	}
	if t.vmDead() {
		return fmt.Errorf("the task's VM is gone (%v): %w", t.machine.Err(), errdefs.ErrNotFound)
	}
	return errgrpc.ToNative(err)
}

func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	s.lifecycle.Lock()
	defer s.lifecycle.Unlock()
	s.mu.Lock()
	if s.t != nil {
		s.mu.Unlock()
		return nil, errgrpc.ToGRPC(fmt.Errorf("this shim already runs task %q: %w", s.t.id, errdefs.ErrAlreadyExists))
	}
	s.mu.Unlock()
	t, err := s.create(ctx, r)
	if err != nil {
		if errdefs.IsNotImplemented(err) {
			// containerd takes NotImplemented from Create for "this shim
			// has no task API v3", retries v2 and then can neither use
			// nor delete the shim: a request we cannot serve is invalid.
			err = fmt.Errorf("%s: %w", err.Error(), errdefs.ErrInvalidArgument)
		}
		return nil, errgrpc.ToGRPC(err)
	}
	s.mu.Lock()
	s.t = t
	s.mu.Unlock()
	init := t.procs[""]
	s.publish(ctx, runtime.TaskCreateEventTopic, &eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint:  r.Checkpoint,
		Pid:         init.pid,
	})
	return &taskAPI.CreateTaskResponse{Pid: init.pid}, nil
}

func (s *service) create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *vmTask, retErr error) {
	if r.Checkpoint != "" {
		return nil, fmt.Errorf("restoring a checkpoint: %w", errdefs.ErrNotImplemented)
	}
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	opts, err := loadOptions(r.Bundle, r.Options)
	if err != nil {
		return nil, err
	}
	fstype := shareFSType(opts.Backend)
	spec, hs, shares, setupShares, err := guestSpec(r.Bundle, fstype)
	if err != nil {
		return nil, err
	}
	tnet, err := newTaskNet(ctx, r.Bundle, ns, r.ID, hs, opts)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	defer func() {
		if retErr != nil {
			if err := tnet.teardown(context.WithoutCancel(ctx)); err != nil {
				log.G(ctx).WithError(err).Warn("removing the task's network")
			}
		}
	}()
	// After the shares: the network files are guest paths, not host ones.
	networkSpec(spec, tnet.hasNetwork())
	config, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	rootfs, err := planRootfs(r.Bundle, r.Rootfs, fstype)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil && rootfs.hostMounted != "" {
			_ = unmountHostRootfs(rootfs.hostMounted)
		}
	}()
	if rootfs.share != nil {
		shares = append(shares, *rootfs.share)
		setupShares = append(setupShares, rootfs.agentShare)
	}
	if dev := shareDevice(opts.Backend); dev != "" {
		for _, s := range setupShares {
			s.Device = dev
		}
	}

	stateDir := filepath.Join(r.Bundle, "vm")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	console := filepath.Join(r.Bundle, "console.log")
	cpus, memMiB := vmSize(spec, opts.CPUs, opts.MemoryMiB)
	cfg := vm.Config{
		ID:          r.ID,
		Kernel:      opts.Kernel,
		Initrd:      opts.Initrd,
		KernelArgs:  opts.KernelArgs,
		Arch:        opts.Arch,
		CPUs:        cpus,
		MemoryMiB:   memMiB,
		Disks:       rootfs.disks,
		Shares:      shares,
		ConsoleLog:  console,
		StateDir:    stateDir,
		Accel:       opts.Accel,
		DiskCaching: opts.DiskCaching,
		DiskSync:    opts.DiskSync,
	}
	tnet.configure(&cfg)
	m, err := newMachine(ctx, opts.Backend, cfg)
	if err != nil {
		return nil, err
	}
	t := &vmTask{
		id:          r.ID,
		bundle:      r.Bundle,
		namespace:   ns,
		machine:     m,
		console:     console,
		keepConsole: opts.DebugConsole,
		hostRootfs:  rootfs.hostMounted,
		procs:       make(map[string]*hostProcess),
		net:         tnet,
		hooks:       hs.hooks,
		spec:        spec,
	}
	defer func() {
		if retErr != nil {
			t.stop(ctx)
		}
	}()
	start := time.Now()
	if err := t.boot(ctx); err != nil {
		return nil, err
	}
	bootCtx, cancel := context.WithTimeout(ctx, time.Duration(opts.BootTimeout)*time.Second)
	conn, err := vm.DialRetry(bootCtx, m, agentapi.PortControl)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("waiting for the agent: %w%s", err, consoleTail(console))
	}
	t.client = ttrpc.NewClient(conn)
	t.agent = taskAPI.NewTTRPCTaskClient(t.client)
	t.bundles = agentapi.NewBundleClient(t.client)
	log.G(ctx).WithField("boot", time.Since(start)).Info("agent ready")

	sys := agentapi.NewSystemClient(t.client)
	setup := &agentapi.SetupRequest{
		Hostname:     spec.Hostname,
		Time:         protobuf.ToTimestamp(time.Now()),
		Shares:       setupShares,
		Network:      tnet.guest(),
		Sysctls:      hs.sysctls,
		ForwardPorts: *opts.ForwardPorts,
	}
	if setup.ForwardPorts {
		t.forwarder = newPortForwarder(m)
	}
	if _, err := sys.Setup(ctx, setup); err != nil {
		return nil, fmt.Errorf("setting up the guest: %w", errgrpc.ToNative(err))
	}
	b, err := t.bundles.Create(ctx, &agentapi.CreateBundleRequest{
		Id:    r.ID,
		Files: []*agentapi.BundleFile{{Path: "config.json", Data: config, Mode: 0o644}},
	})
	if err != nil {
		return nil, fmt.Errorf("delivering the bundle: %w", errgrpc.ToNative(err))
	}
	go s.forwardEvents(t)
	go s.watchVM(t)
	go t.syncClock(sys)

	p := &hostProcess{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal, exited: make(chan struct{})}
	if p.io, err = openIO(ctx, m, r.ID, ns, r.Stdin, r.Stdout, r.Stderr, r.Terminal); err != nil {
		return nil, err
	}
	t.procs[""] = p
	resp, err := t.agent.Create(ctx, &taskAPI.CreateTaskRequest{
		ID:       r.ID,
		Bundle:   b.Bundle,
		Rootfs:   rootfs.guest,
		Terminal: r.Terminal,
		Stdin:    p.io.ids[0],
		Stdout:   p.io.ids[1],
		Stderr:   p.io.ids[2],
	})
	if err != nil {
		return nil, fmt.Errorf("creating the container in the guest: %w", t.agentErr(err))
	}
	p.guestPid, p.pid = resp.Pid, t.hostPid("", resp.Pid)
	return t, nil
}

// hostPid is the pid containerd knows a process by. The task's own (init)
// is the VMM's, a host process in the VM's network namespace, as Kata
// does: containerd's clients look at /proc/<task pid> (nerdctl inspect
// reads the task's network there, CRI its namespaces). Execs keep their
// guest pids. A VMM in the shim's own process (VZ) leaves guest pids.
func (t *vmTask) hostPid(execID string, guestPid uint32) uint32 {
	if execID == "" {
		if vp := t.machine.Pid(); vp > 0 {
			return uint32(vp)
		}
	}
	return guestPid
}

// hostSpec is what of the container's spec the host acts on itself.
type hostSpec struct {
	hooks hostHooks
	// netnsPath is the network namespace the spec names; netnsNew says
	// it asks for a new one.
	netnsPath string
	netnsNew  bool
	// sysctls are the spec's net.* sysctls: they go to the VM, the
	// container's network sandbox.
	sysctls map[string]string
}

// boot starts the VM. A VMM that can run before its guest (vm.Launcher) is
// launched first: the prestart and createRuntime hooks see its pid, in the
// VM's network namespace, and the NICs of what they made there are added
// before the guest boots.
func (t *vmTask) boot(ctx context.Context) error {
	l, ok := t.machine.(vm.Launcher)
	if !ok {
		if t.hooks.setsUpNetwork() {
			return fmt.Errorf("prestart and createRuntime hooks need a VMM process on the host, which this backend has not: %w", errdefs.ErrInvalidArgument)
		}
		if err := t.machine.Start(ctx); err != nil {
			return fmt.Errorf("starting the VM: %w", err)
		}
		return nil
	}
	if err := l.Launch(ctx); err != nil {
		return fmt.Errorf("starting the VM: %w", err)
	}
	state := t.hookState(specs.StateCreating)
	if err := runHooks(ctx, "prestart", t.hooks.prestart, state); err != nil {
		return err
	}
	if err := runHooks(ctx, "createRuntime", t.hooks.createRuntime, state); err != nil {
		return err
	}
	if err := t.net.plug(ctx, l); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := l.Start(ctx); err != nil {
		return fmt.Errorf("starting the VM: %w", err)
	}
	return nil
}

// hookState is the container's state as its OCI hooks read it; the pid is
// the VMM's, the task's process on the host.
func (t *vmTask) hookState(status specs.ContainerState) specs.State {
	st := specs.State{ID: t.id, Status: status, Pid: t.machine.Pid(), Bundle: t.bundle}
	if t.spec != nil {
		st.Version, st.Annotations = t.spec.Version, t.spec.Annotations
	}
	return st
}

// guestSpec reads the bundle's config.json and rewrites it for the guest:
// the root becomes the bundle's rootfs directory there, bind mounts of host
// paths come from the VM shares it returns (mounted with fstype), the
// host's hooks, network namespace and net.* sysctls move to hostSpec.
// networkSpec finishes it once the VM's network is known.
func guestSpec(bundle, fstype string) (*specs.Spec, hostSpec, []vm.Share, []*agentapi.Share, error) {
	var hs hostSpec
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, hs, nil, nil, fmt.Errorf("reading config.json: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, hs, nil, nil, fmt.Errorf("malformed config.json: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if spec.Root == nil {
		spec.Root = &specs.Root{}
	}
	spec.Root.Path = "rootfs"
	shares, agentShares, err := guestShares(&spec, fstype)
	if err != nil {
		return nil, hs, nil, nil, err
	}
	hs.hooks = takeHostHooks(&spec)
	if spec.Linux != nil {
		for _, n := range spec.Linux.Namespaces {
			if n.Type == specs.NetworkNamespace {
				hs.netnsPath, hs.netnsNew = n.Path, n.Path == ""
				continue
			}
			if n.Path != "" {
				// InvalidArgument, not NotImplemented: containerd takes
				// the latter from Create for "task API v3 unsupported".
				return nil, hs, nil, nil, fmt.Errorf("joining the %s namespace at %s: host namespaces do not exist in the VM: %w", n.Type, n.Path, errdefs.ErrInvalidArgument)
			}
		}
		for k, v := range spec.Linux.Sysctl {
			if strings.HasPrefix(k, "net.") {
				if hs.sysctls == nil {
					hs.sysctls = map[string]string{}
				}
				hs.sysctls[k] = v
				delete(spec.Linux.Sysctl, k)
			}
		}
	}
	return &spec, hs, shares, agentShares, nil
}

func hasOption(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}

// consoleTail is the end of the guest console, for errors about a VM that
// did not come up.
func consoleTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	const max = 2048
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return "\nguest console (last lines):\n" + strings.TrimSpace(string(b))
}

// forwardEvents republishes the agent's events to containerd. The exit of a
// process goes out only after its output reached containerd's side.
func (s *service) forwardEvents(t *vmTask) {
	ctx := namespaces.WithNamespace(context.Background(), t.namespace)
	stream, err := agentapi.NewEventsClient(t.client).Stream(ctx, &agentapi.StreamEventsRequest{})
	if err != nil {
		log.G(ctx).WithError(err).Error("subscribing to the agent's events")
		return
	}
	for {
		env, err := stream.Recv()
		if err != nil {
			if !t.vmDead() {
				log.G(ctx).WithError(err).Debug("agent event stream ended")
			}
			return
		}
		v, err := typeurl.UnmarshalAny(env.Event)
		if err != nil {
			log.G(ctx).WithError(err).WithField("topic", env.Topic).Warn("undecodable agent event")
			continue
		}
		switch e := v.(type) {
		case *agentapi.PortEvent:
			// The shim's own business, not containerd's.
			if t.forwarder != nil {
				t.forwarder.handle(ctx, e)
			}
			continue
		case *eventstypes.TaskCreate, *eventstypes.TaskDelete:
			// The shim publishes these with the host's bundle, mounts and
			// stdio, and only once the VM side is done.
			continue
		case *eventstypes.TaskExit:
			execID := e.ID
			if execID == t.id {
				execID = ""
			}
			if p, err := t.process(execID); err == nil {
				dctx, cancel := context.WithTimeout(ctx, exitDrainTimeout)
				p.io.wait(dctx)
				cancel()
				p.exit(e.ExitStatus, protobuf.FromTimestamp(e.ExitedAt))
				e.Pid, _ = p.pids()
			}
		case *eventstypes.TaskStart:
			e.Pid = t.hostPid("", e.Pid)
		}
		s.publish(ctx, env.Topic, v)
	}
}

// syncClock steps the guest clock to the host's now and then: a VM's clock
// falls behind while the host sleeps or the VM is paused, and the guest
// has no time source of its own to catch up from.
func (t *vmTask) syncClock(sys agentapi.SystemService) {
	tick := time.NewTicker(clockSyncInterval)
	defer tick.Stop()
	for {
		select {
		case <-t.machine.Done():
			return
		case <-tick.C:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := sys.SetTime(ctx, &agentapi.SetTimeRequest{Time: protobuf.ToTimestamp(time.Now())}); err != nil && !t.vmDead() {
				log.G(ctx).WithError(err).WithField("id", t.id).Debug("setting the guest clock")
			}
			cancel()
		}
	}
}

// watchVM notices a VM that died while its task lived: every process exits
// (status 255), every Wait returns and containerd hears of it.
func (s *service) watchVM(t *vmTask) {
	<-t.machine.Done()
	ctx := namespaces.WithNamespace(context.Background(), t.namespace)
	t.mu.Lock()
	stopped := t.stopped
	procs := make(map[string]*hostProcess, len(t.procs))
	for k, v := range t.procs {
		procs[k] = v
	}
	t.mu.Unlock()
	if stopped {
		return
	}
	log.G(ctx).WithError(t.machine.Err()).WithField("id", t.id).Errorf("the task's VM died%s", consoleTail(t.console))
	now := time.Now()
	// Execs first, init last, as the kernel would have it.
	for execID, p := range procs {
		if execID == "" {
			continue
		}
		s.vmDeadExit(ctx, t, p, now)
	}
	if p := procs[""]; p != nil {
		s.vmDeadExit(ctx, t, p, now)
	}
}

func (s *service) vmDeadExit(ctx context.Context, t *vmTask, p *hostProcess, at time.Time) {
	if !p.exit(vmDeadStatus, at) {
		return
	}
	// Nothing more can come from the guest: unblock containerd's readers.
	p.io.close()
	id := p.execID
	if id == "" {
		id = t.id
	}
	s.publish(ctx, runtime.TaskExitEventTopic, &eventstypes.TaskExit{
		ContainerID: t.id,
		ID:          id,
		Pid:         p.pid,
		ExitStatus:  vmDeadStatus,
		ExitedAt:    protobuf.ToTimestamp(at),
	})
}

// forward sends one call to the agent of task id; errors come back in
// their errdefs classes.
func forward[R any](s *service, id string, call func(agent taskAPI.TTRPCTaskService) (R, error)) (R, error) {
	var none R
	t, err := s.task(id)
	if err != nil {
		return none, errgrpc.ToGRPC(err)
	}
	resp, err := call(t.agent)
	if err != nil {
		return none, errgrpc.ToGRPC(t.agentErr(err))
	}
	return resp, nil
}

func (s *service) publish(ctx context.Context, topic string, ev any) {
	if err := s.publisher.Publish(ctx, topic, ev); err != nil {
		log.G(ctx).WithError(err).WithField("topic", topic).Warn("publishing event")
	}
}

// stop ends the VM: the agent is asked to power off, then the VM is
// stopped, then everything the shim made for it is removed.
func (t *vmTask) stop(ctx context.Context) {
	t.mu.Lock()
	t.stopped = true
	procs := make([]*hostProcess, 0, len(t.procs))
	for _, p := range t.procs {
		procs = append(procs, p)
	}
	t.mu.Unlock()
	if t.client != nil {
		if !t.vmDead() {
			// The agent syncs, unmounts and powers off; forcing the VM
			// off before that could lose what the container wrote.
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			_, _ = t.agent.Shutdown(sctx, &taskAPI.ShutdownRequest{ID: t.id})
			cancel()
			select {
			case <-t.machine.Done():
			case <-time.After(powerOffWait):
			}
		}
		t.client.Close()
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	if err := t.machine.Stop(sctx); err != nil {
		log.G(ctx).WithError(err).WithField("id", t.id).Warn("stopping the VM")
	}
	cancel()
	for _, p := range procs {
		if p.io != nil {
			p.io.close()
		}
	}
	if t.forwarder != nil {
		t.forwarder.close()
	}
	// After the VM: hooks that undo what createRuntime hooks made
	// (nerdctl's CNI teardown), then the network the VM used.
	if err := runHooks(ctx, "poststop", t.hooks.poststop, t.hookState(specs.StateStopped)); err != nil {
		log.G(ctx).WithError(err).WithField("id", t.id).Warn("poststop hook failed")
	}
	if err := t.net.teardown(ctx); err != nil {
		log.G(ctx).WithError(err).WithField("id", t.id).Warn("removing the task's network")
	}
	// After the VM: QEMU serves the share from it until it exits.
	if t.hostRootfs != "" {
		if err := unmountHostRootfs(t.hostRootfs); err != nil {
			log.G(ctx).WithError(err).WithField("id", t.id).Warn("unmounting the rootfs")
		}
	}
	os.RemoveAll(filepath.Join(t.bundle, "vm"))
	if !t.keepConsole {
		os.Remove(t.console)
	}
}

// stopVM is the shim's shutdown callback: no VM outlives its shim.
func (s *service) stopVM() {
	s.mu.Lock()
	t := s.t
	s.mu.Unlock()
	if t != nil {
		t.stop(context.Background())
	}
}

func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	t, p, err := s.taskProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	resp, err := t.agent.Start(ctx, &taskAPI.StartRequest{ID: r.ID, ExecID: r.ExecID})
	if err != nil {
		return nil, errgrpc.ToGRPC(t.agentErr(err))
	}
	p.mu.Lock()
	p.guestPid, p.pid = resp.Pid, t.hostPid(r.ExecID, resp.Pid)
	resp.Pid = p.pid
	p.mu.Unlock()
	if r.ExecID == "" {
		// As the runtime spec says: a failed poststart hook is a warning.
		if err := runHooks(ctx, "poststart", t.hooks.poststart, t.hookState(specs.StateRunning)); err != nil {
			log.G(ctx).WithError(err).WithField("id", t.id).Warn("poststart hook failed")
		}
	}
	return resp, nil
}

func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	t, err := s.task(r.ID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	t.mu.Lock()
	_, exists := t.procs[r.ExecID]
	t.mu.Unlock()
	if exists || r.ExecID == "" {
		return nil, errgrpc.ToGRPC(fmt.Errorf("exec %q: %w", r.ExecID, errdefs.ErrAlreadyExists))
	}
	p := &hostProcess{execID: r.ExecID, stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal, exited: make(chan struct{})}
	if p.io, err = openIO(ctx, t.machine, r.ID, t.namespace, r.Stdin, r.Stdout, r.Stderr, r.Terminal); err != nil {
		return nil, errgrpc.ToGRPC(t.agentErr(err))
	}
	_, err = t.agent.Exec(ctx, &taskAPI.ExecProcessRequest{
		ID: r.ID, ExecID: r.ExecID, Terminal: r.Terminal, Spec: r.Spec,
		Stdin: p.io.ids[0], Stdout: p.io.ids[1], Stderr: p.io.ids[2],
	})
	if err != nil {
		p.io.close()
		return nil, errgrpc.ToGRPC(t.agentErr(err))
	}
	t.mu.Lock()
	t.procs[r.ExecID] = p
	t.mu.Unlock()
	return &emptypb.Empty{}, nil
}

func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	t, p, err := s.taskProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	var resp *taskAPI.StateResponse
	if !t.vmDead() {
		resp, err = t.agent.State(ctx, r)
		if err != nil && !t.vmDead() {
			return nil, errgrpc.ToGRPC(t.agentErr(err))
		}
	}
	if resp == nil {
		status, at := p.result()
		resp = &taskAPI.StateResponse{ID: r.ID, ExecID: r.ExecID, Pid: p.pid, Status: task.Status_STOPPED, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}
		if r.ExecID != "" {
			resp.ID = r.ExecID
		}
	}
	// The host's view of the pid and the paths.
	if host, _ := p.pids(); host != 0 {
		resp.Pid = host
	}
	resp.Bundle = t.bundle
	resp.Stdin, resp.Stdout, resp.Stderr, resp.Terminal = p.stdin, p.stdout, p.stderr, p.terminal
	return resp, nil
}

func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	t, p, err := s.taskProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	type result struct {
		resp *taskAPI.WaitResponse
		err  error
	}
	agentc := make(chan result, 1)
	go func() {
		resp, err := t.agent.Wait(ctx, r)
		agentc <- result{resp, err}
	}()
	select {
	case res := <-agentc:
		if res.err == nil {
			// Exit ordering: the output reaches containerd first.
			dctx, cancel := context.WithTimeout(ctx, exitDrainTimeout)
			p.io.wait(dctx)
			cancel()
			p.exit(res.resp.ExitStatus, protobuf.FromTimestamp(res.resp.ExitedAt))
		} else if !p.hasExited() {
			if !t.vmDead() {
				return nil, errgrpc.ToGRPC(t.agentErr(res.err))
			}
			// The VM died: watchVM records the exit at once.
			select {
			case <-p.exited:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	case <-p.exited:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	status, at := p.result()
	return &taskAPI.WaitResponse{ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	t, p, err := s.taskProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if r.ExecID != "" {
		if !t.vmDead() {
			if _, err := t.agent.Delete(ctx, r); err != nil && !t.vmDead() {
				return nil, errgrpc.ToGRPC(t.agentErr(err))
			}
		}
		p.io.close()
		t.mu.Lock()
		delete(t.procs, r.ExecID)
		t.mu.Unlock()
		status, at := p.result()
		return &taskAPI.DeleteResponse{Pid: p.pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
	}

	s.lifecycle.Lock()
	defer s.lifecycle.Unlock()
	if !t.vmDead() {
		resp, err := t.agent.Delete(ctx, r)
		if err != nil && !t.vmDead() {
			return nil, errgrpc.ToGRPC(t.agentErr(err))
		}
		if resp != nil {
			p.exit(resp.ExitStatus, protobuf.FromTimestamp(resp.ExitedAt))
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			_, _ = t.bundles.Remove(sctx, &agentapi.RemoveBundleRequest{Id: t.id})
			cancel()
		}
	}
	if !p.hasExited() {
		// Deleted without having exited: only a dead VM gets here.
		p.exit(vmDeadStatus, time.Now())
	}
	t.stop(ctx)
	s.mu.Lock()
	s.t = nil
	s.mu.Unlock()
	status, at := p.result()
	s.publish(ctx, runtime.TaskDeleteEventTopic, &eventstypes.TaskDelete{
		ContainerID: t.id,
		ID:          t.id,
		Pid:         p.pid,
		ExitStatus:  status,
		ExitedAt:    protobuf.ToTimestamp(at),
	})
	return &taskAPI.DeleteResponse{Pid: p.pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// Pids lists the guest's processes of the task, the init process under the
// pid containerd knows it by (hostPid).
func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	resp, err := forward(s, r.ID, func(a taskAPI.TTRPCTaskService) (*taskAPI.PidsResponse, error) { return a.Pids(ctx, r) })
	if err != nil {
		return nil, err
	}
	if _, p, err := s.taskProcess(r.ID, ""); err == nil {
		host, guest := p.pids()
		for _, pi := range resp.Processes {
			if pi.Pid == guest {
				pi.Pid = host
			}
		}
	}
	return resp, nil
}

func (s *service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	return forward(s, r.ID, func(a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) { return a.Pause(ctx, r) })
}

func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	return forward(s, r.ID, func(a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) { return a.Resume(ctx, r) })
}

func (s *service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, errgrpc.ToGRPC(fmt.Errorf("checkpointing a VM task: %w", errdefs.ErrNotImplemented))
}

// Kill of a task whose VM died finds the process finished, like the runc
// shim for a process that exited (agentErr).
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	return forward(s, r.ID, func(a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) { return a.Kill(ctx, r) })
}

func (s *service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	return forward(s, r.ID, func(a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) { return a.ResizePty(ctx, r) })
}

// CloseIO ends stdin after the bytes already sent: the copy to the guest
// half-closes its stream at the FIFO's end, so EOF never overtakes data.
func (s *service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.taskProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if r.Stdin {
		p.io.closeStdin()
	}
	return &emptypb.Empty{}, nil
}

func (s *service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	return forward(s, r.ID, func(a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) { return a.Update(ctx, r) })
}

func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	return forward(s, r.ID, func(a taskAPI.TTRPCTaskService) (*taskAPI.StatsResponse, error) { return a.Stats(ctx, r) })
}

func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: Version}
	if t, err := s.task(r.ID); err == nil {
		if p, err := t.process(""); err == nil {
			resp.TaskPid = p.pid
		}
	}
	return resp, nil
}

// Shutdown ends the shim once its task is deleted, as the runc shim does.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	live := s.t != nil
	s.mu.Unlock()
	if !live {
		s.sd.Shutdown()
	}
	return &emptypb.Empty{}, nil
}
