package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
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
	"github.com/vz-shim/containerd-shim-vz/api/modgroups"
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
	// guestAnswerTimeout is how long the agent has to answer a short call
	// (State, Kill, Pids, Stats, Update, Pause, Resume, ResizePty, the
	// Delete of a process): a guest that does not is hung, or lies. The
	// call fails (DeadlineExceeded), but a SIGKILL stops the VM, which kills
	// every process in it (SIGKILL always works, as on a host).
	guestAnswerTimeout = 10 * time.Second
	// stateAnswerTimeout is the guest's time to answer State, within
	// containerd's own bound on it; a silent guest's task gets the shim's
	// view (hostProcess.ownState).
	stateAnswerTimeout = 1500 * time.Millisecond
	// setupAnswerTimeout is the guest's time to set itself up (network,
	// shares) once its agent answers: ~0.1 s under TCG, so a guest that
	// takes this long has hung.
	setupAnswerTimeout = 30 * time.Second
)

// NewTaskService is the shim's task service: containerd's task API, served
// by running the shim's containers in one micro-VM and forwarding to the
// agent inside.
func NewTaskService(ctx context.Context, publisher shim.Publisher, sd shutdown.Service) (taskAPI.TTRPCTaskService, error) {
	s := &service{publisher: publisher, sd: sd, containers: map[string]*container{}}
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

// service is one shim: one sandbox (VM) and the containers in it, one
// unless containers are grouped (a pod, manager.Start).
type service struct {
	publisher shim.Publisher
	sd        shutdown.Service

	// mu guards sb and containers; lifecycle serialises the Create and
	// Delete of containers.
	mu         sync.Mutex
	lifecycle  sync.Mutex
	sb         *sandbox
	containers map[string]*container
}

var _ taskAPI.TTRPCTaskService = (*service)(nil)

func (s *service) task(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.containers[id]
	if c == nil {
		return nil, fmt.Errorf("task %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// taskProcess finds a process of one of the shim's containers.
func (s *service) taskProcess(id, execID string) (*container, *hostProcess, error) {
	c, err := s.task(id)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.process(execID)
	if err != nil {
		return nil, nil, err
	}
	return c, p, nil
}

func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	s.lifecycle.Lock()
	defer s.lifecycle.Unlock()
	s.mu.Lock()
	_, exists := s.containers[r.ID]
	sb := s.sb
	s.mu.Unlock()
	if exists {
		return nil, errgrpc.ToGRPC(fmt.Errorf("task %q: %w", r.ID, errdefs.ErrAlreadyExists))
	}
	var (
		c   *container
		err error
	)
	if sb == nil {
		c, err = s.createSandbox(ctx, r)
	} else {
		c, err = s.join(ctx, sb, r)
	}
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
	s.containers[r.ID] = c
	s.mu.Unlock()
	pid, _ := c.initPids()
	s.publish(ctx, runtime.TaskCreateEventTopic, &eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint:  r.Checkpoint,
		Pid:         pid,
	})
	return &taskAPI.CreateTaskResponse{Pid: pid}, nil
}

// createSandbox boots the VM with its first container.
func (s *service) createSandbox(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *container, retErr error) {
	trace := newBootTrace(r.ID)
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
	spec, hs, shares, setupShares, err := guestSpec(r.Bundle, fstype, nil)
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
	rootfs, err := planRootfs(r.Bundle, r.Rootfs, fstype, "rootfs")
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
		ID:           r.ID,
		Kernel:       opts.Kernel,
		Initrd:       opts.Initrd,
		RootDisk:     opts.RootFS,
		KernelArgs:   kernelArgs(opts, groupOf(spec) != ""),
		Arch:         opts.Arch,
		CPUs:         cpus,
		MemoryMiB:    memMiB,
		Disks:        rootfs.disks,
		Shares:       shares,
		ConsoleLog:   console,
		StateDir:     stateDir,
		Accel:        opts.Accel,
		TCGTBSizeMiB: opts.TCGTBSizeMiB,
		DiskCaching:  opts.DiskCaching,
		DiskSync:     opts.DiskSync,
	}
	var pod *podShare
	if groupOf(spec) != "" {
		// Containers of the group join this VM later with disks and
		// host paths of their own.
		cfg.DiskSlots = groupDiskSlots
		cfg.DiskHotplugBus = opts.DiskHotplug
		if pod, err = newPodShare(r.Bundle); err != nil {
			return nil, err
		}
		if pod.dir != "" {
			defer func() {
				if retErr != nil {
					os.Remove(pod.dir)
				}
			}()
			cfg.Shares = append(cfg.Shares, vm.Share{Tag: podShareTag, Path: pod.dir})
			ps := &agentapi.Share{Tag: podShareTag, Fstype: fstype, Device: shareDevice(opts.Backend)}
			setupShares = append(setupShares, ps)
		}
	}
	tnet.configure(&cfg)
	trace.mark(ctx, phasePrepared)
	warm, cfg := warmConfig(ctx, opts, cfg)
	if warm != nil {
		trace.setWarm(true)
		trace.mark(ctx, phaseTemplate)
	}
	m, err := newMachine(ctx, opts.Backend, cfg)
	if err != nil && warm != nil {
		warm.discard(ctx, err)
		warm, cfg = nil, warm.cold
		m, err = newMachine(ctx, opts.Backend, cfg)
	}
	if err != nil {
		return nil, err
	}
	sb := &sandbox{
		id:          r.ID,
		bundle:      r.Bundle,
		namespace:   ns,
		backend:     opts.Backend,
		machine:     m,
		console:     console,
		keepConsole: opts.DebugConsole,
		net:         tnet,
		pod:         pod,
		trace:       trace,
		warm:        warm,
	}
	cctx, stopConsole := context.WithCancel(context.WithoutCancel(ctx))
	sb.stopConsole = stopConsole
	go boundConsole(cctx, console, maxConsoleLog, consoleCheck)
	c := newContainer(r, sb, spec, hs, rootfs)
	defer func() {
		if retErr != nil {
			sb.stop(ctx, c, false)
		}
	}()
	setup := &agentapi.SetupRequest{
		Hostname:     spec.Hostname,
		Time:         protobuf.ToTimestamp(time.Now()),
		Shares:       setupShares,
		Sysctls:      hs.sysctls,
		ForwardPorts: *opts.ForwardPorts,
	}
	if err := sb.boot(ctx, c, opts, setup); err != nil {
		return nil, err
	}
	go s.forwardEvents(sb)
	go s.watchVM(sb)
	go s.watchBundle(sb, bundleCheck)
	go sb.syncClock()
	if err := s.createInGuest(ctx, c, r, config, rootfs.guest); err != nil {
		return nil, err
	}
	if err := trace.guestInfo(ctx, sb.sys); err != nil { // rootfs mounted
		return nil, err
	}
	trace.mark(ctx, phaseCreated)
	s.mu.Lock()
	s.sb = sb
	s.mu.Unlock()
	return c, nil
}

// groupDiskSlots is how many disks the containers that join a grouped
// VM can bring, all together.
const groupDiskSlots = 8

// join creates a container in the running VM: its rootfs disks are
// hot-plugged, its namespaces are the VM's (network) or the sandbox
// container's (CRI's /proc/<pid>/ns paths).
func (s *service) join(ctx context.Context, sb *sandbox, r *taskAPI.CreateTaskRequest) (_ *container, retErr error) {
	if r.Checkpoint != "" {
		return nil, fmt.Errorf("restoring a checkpoint: %w", errdefs.ErrNotImplemented)
	}
	if sb.vmDead() {
		return nil, fmt.Errorf("the VM of this group is gone (%v): %w", sb.machine.Err(), errdefs.ErrFailedPrecondition)
	}
	s.mu.Lock()
	first := s.containers[sb.id]
	s.mu.Unlock()
	var mapNS nsMapper
	if first != nil {
		mapNS = sb.mapNamespace(first)
	}
	spec, hs, shares, _, err := guestSpec(r.Bundle, shareFSType(sb.backend), mapNS)
	if err != nil {
		return nil, err
	}
	if sb.pod == nil {
		return nil, fmt.Errorf("the VM of task %s takes no containers: %w", sb.id, errdefs.ErrFailedPrecondition)
	}
	if hs.netnsPath != "" && !sameFile(hs.netnsPath, sb.net.sandboxPath()) {
		return nil, fmt.Errorf("joining the network namespace at %s: the VM runs in %q: %w", hs.netnsPath, sb.net.sandboxPath(), errdefs.ErrInvalidArgument)
	}
	if len(hs.sysctls) > 0 {
		return nil, fmt.Errorf("net.* sysctls %v in a container that joins a running VM: the VM's network is set up: %w", hs.sysctls, errdefs.ErrInvalidArgument)
	}
	networkSpec(spec, sb.net.hasNetwork())
	redirectShares(spec, r.ID, shares)
	config, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	rootfs, err := planRootfs(r.Bundle, r.Rootfs, shareFSType(sb.backend), sb.nextDiskPrefix())
	if err != nil {
		return nil, err
	}
	c := newContainer(r, sb, spec, hs, rootfs)
	defer func() {
		if retErr != nil {
			c.cleanup(context.WithoutCancel(ctx))
		}
	}()
	if rootfs.share != nil {
		shares = append(shares, *rootfs.share)
		redirectRootfs(rootfs.guest, r.ID)
	}
	if len(shares) > 0 {
		c.podShared = true
		if err := sb.pod.add(r.ID, shares); err != nil {
			return nil, err
		}
	}
	hp, ok := sb.machine.(vm.DiskHotplugger)
	if !ok && len(rootfs.disks) > 0 {
		return nil, fmt.Errorf("this backend cannot add disks to a running VM: %w", errdefs.ErrNotImplemented)
	}
	for _, d := range rootfs.disks {
		if err := hp.AddDisk(ctx, d); err != nil {
			return nil, fmt.Errorf("adding the rootfs to the VM: %w", err)
		}
		c.hotDisks = append(c.hotDisks, d.ID)
	}
	if err := c.runCreateHooks(ctx); err != nil {
		return nil, err
	}
	if err := s.createInGuest(ctx, c, r, config, rootfs.guest); err != nil {
		return nil, err
	}
	return c, nil
}

func newContainer(r *taskAPI.CreateTaskRequest, sb *sandbox, spec *specs.Spec, hs hostSpec, rootfs *rootfsPlan) *container {
	return &container{
		id:         r.ID,
		bundle:     r.Bundle,
		sb:         sb,
		spec:       spec,
		hooks:      hs.hooks,
		hostRootfs: rootfs.hostMounted,
		procs:      make(map[string]*hostProcess),
	}
}

// sameFile tells whether the paths name one file (two paths of one network
// namespace: CRI names the pod's as /proc/<sandbox pid>/ns/net).
func sameFile(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// createInGuest delivers the container's bundle to the agent, opens its
// stdio and creates it there.
func (s *service) createInGuest(ctx context.Context, c *container, r *taskAPI.CreateTaskRequest, config []byte, rootfs []*types.Mount) error {
	sb := c.sb
	b, err := sb.bundles.Create(ctx, &agentapi.CreateBundleRequest{
		Id:    r.ID,
		Files: []*agentapi.BundleFile{{Path: "config.json", Data: config, Mode: 0o644}},
	})
	if err != nil {
		return fmt.Errorf("delivering the bundle: %w", errgrpc.ToNative(err))
	}
	p := &hostProcess{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal, exited: make(chan struct{})}
	var onOutput func()
	if sb.trace != nil && sb.id == r.ID {
		onOutput = func() { sb.trace.mark(context.WithoutCancel(ctx), phaseFirstOutput) }
	}
	if p.io, err = openIO(ctx, sb.machine, r.ID, sb.namespace, r.Stdin, r.Stdout, r.Stderr, r.Terminal, onOutput); err != nil {
		return err
	}
	// An init's stdin opens at Create, as in the runc shim.
	if err := p.io.startStdin(ctx); err != nil {
		p.io.close()
		return err
	}
	c.mu.Lock()
	c.procs[""] = p
	c.mu.Unlock()
	resp, err := sb.agent.Create(ctx, &taskAPI.CreateTaskRequest{
		ID:       r.ID,
		Bundle:   b.Bundle,
		Rootfs:   rootfs,
		Terminal: r.Terminal,
		Stdin:    p.io.ids[0],
		Stdout:   p.io.ids[1],
		Stderr:   p.io.ids[2],
	})
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_, _ = sb.bundles.Remove(rctx, &agentapi.RemoveBundleRequest{Id: r.ID})
		cancel()
		return fmt.Errorf("creating the container in the guest: %w", sb.agentErr(err))
	}
	p.setPids(c.hostPid("", resp.Pid), resp.Pid)
	return nil
}

// checkGuestEvent admits an event of the agent before the shim acts on it
// or passes it on to containerd: the topic must be the event's own, and the
// event must be about a container (and, for an exit, a process) of this
// shim. A guest can send anything; containerd must never hear from it of
// another task, or under another topic (SECURITY.md).
func (s *service) checkGuestEvent(topic string, v any) error {
	var cid, execID string
	want := ""
	switch e := v.(type) {
	case *agentapi.PortEvent:
		if topic != agentapi.PortEventTopic {
			return fmt.Errorf("a port event under topic %q: %w", topic, errdefs.ErrInvalidArgument)
		}
		return nil
	case *eventstypes.TaskCreate:
		want, cid = runtime.TaskCreateEventTopic, e.ContainerID
	case *eventstypes.TaskStart:
		want, cid = runtime.TaskStartEventTopic, e.ContainerID
	case *eventstypes.TaskOOM:
		want, cid = runtime.TaskOOMEventTopic, e.ContainerID
	case *eventstypes.TaskExit:
		want, cid, execID = runtime.TaskExitEventTopic, e.ContainerID, e.ID
		if execID == cid {
			execID = ""
		}
	case *eventstypes.TaskDelete:
		want, cid = runtime.TaskDeleteEventTopic, e.ContainerID
	case *eventstypes.TaskExecAdded:
		want, cid = runtime.TaskExecAddedEventTopic, e.ContainerID
	case *eventstypes.TaskExecStarted:
		want, cid = runtime.TaskExecStartedEventTopic, e.ContainerID
	case *eventstypes.TaskPaused:
		want, cid = runtime.TaskPausedEventTopic, e.ContainerID
	case *eventstypes.TaskResumed:
		want, cid = runtime.TaskResumedEventTopic, e.ContainerID
	default:
		return fmt.Errorf("event %T: not one the agent sends: %w", v, errdefs.ErrInvalidArgument)
	}
	if topic != want {
		return fmt.Errorf("event %T under topic %q: %w", v, topic, errdefs.ErrInvalidArgument)
	}
	c, err := s.task(cid)
	if err != nil {
		return fmt.Errorf("event %T of container %q: %w", v, cid, err)
	}
	if _, ok := v.(*eventstypes.TaskExit); ok {
		if _, err := c.process(execID); err != nil {
			return fmt.Errorf("exit of process %q of %q: %w", execID, cid, err)
		}
	}
	return nil
}

// lastOf tells whether c is the only container left in its VM.
func (s *service) lastOf(c *container) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range s.containers {
		if o != c && o.sb == c.sb {
			return false
		}
	}
	return true
}

// forwardEvents republishes the agent's events to containerd. The exit of a
// process goes out only after its output reached containerd's side.
func (s *service) forwardEvents(sb *sandbox) {
	ctx := namespaces.WithNamespace(context.Background(), sb.namespace)
	stream, err := agentapi.NewEventsClient(sb.client).Stream(ctx, &agentapi.StreamEventsRequest{})
	if err != nil {
		log.G(ctx).WithError(err).Error("subscribing to the agent's events")
		return
	}
	var dropped dropLog
	for {
		env, err := stream.Recv()
		if err != nil {
			if !sb.vmDead() {
				log.G(ctx).WithError(err).Debug("agent event stream ended")
			}
			return
		}
		v, err := typeurl.UnmarshalAny(env.Event)
		if err != nil {
			dropped.log(ctx, env.Topic, fmt.Errorf("undecodable: %w", err))
			continue
		}
		switch v.(type) {
		case *eventstypes.TaskCreate, *eventstypes.TaskDelete:
			// The shim publishes these with the host's bundle, mounts and
			// stdio, and only once the VM side is done.
			continue
		}
		if err := s.checkGuestEvent(env.Topic, v); err != nil {
			dropped.log(ctx, env.Topic, err)
			continue
		}
		switch e := v.(type) {
		case *agentapi.PortEvent:
			// The shim's own business, not containerd's.
			for _, f := range sb.forwarders {
				f.handle(ctx, e)
			}
			continue
		case *eventstypes.TaskExit:
			execID := e.ID
			if execID == e.ContainerID {
				execID = ""
			}
			if c, err := s.task(e.ContainerID); err == nil {
				if p, err := c.process(execID); err == nil {
					p.io.drain(ctx, exitDrainTimeout)
					p.exit(e.ExitStatus, protobuf.FromTimestamp(e.ExitedAt))
					e.Pid, _ = p.pids()
					if execID == "" && c.id == sb.id {
						sb.trace.mark(ctx, phaseExited)
					}
				}
			}
		case *eventstypes.TaskStart:
			if c, err := s.task(e.ContainerID); err == nil {
				e.Pid = c.hostPid("", e.Pid)
			}
		}
		s.publish(ctx, env.Topic, v)
	}
}

// dropLog logs the events the shim drops, boundedly: a guest that sends
// nothing but forged events must not fill containerd's log, which the
// shim's log goes to. The first few are logged each, then one line per
// dropLogEvery with the count.
type dropLog struct {
	n, since int
	last     time.Time
}

const (
	dropLogFirst = 10
	dropLogEvery = 10 * time.Second
)

func (d *dropLog) log(ctx context.Context, topic string, err error) {
	d.n++
	if d.n <= dropLogFirst {
		log.G(ctx).WithError(err).WithField("topic", topic).Warn("dropping an agent event")
		d.last = time.Now()
		return
	}
	d.since++
	if time.Since(d.last) >= dropLogEvery {
		log.G(ctx).WithError(err).WithFields(log.Fields{"topic": topic, "dropped": d.since, "total": d.n}).Warn("dropping agent events (the last of them)")
		d.since, d.last = 0, time.Now()
	}
}

// watchVM notices a VM that died while its containers lived: every process
// exits (status 255), every Wait returns and containerd hears of it.
func (s *service) watchVM(sb *sandbox) {
	<-sb.machine.Done()
	ctx := namespaces.WithNamespace(context.Background(), sb.namespace)
	if sb.isStopped() {
		return
	}
	log.G(ctx).WithError(sb.machine.Err()).WithField("id", sb.id).Errorf("the task's VM died%s", consoleTail(sb.console))
	s.mu.Lock()
	containers := make([]*container, 0, len(s.containers))
	for _, c := range s.containers {
		if c.sb == sb {
			containers = append(containers, c)
		}
	}
	s.mu.Unlock()
	now := time.Now()
	for _, c := range containers {
		procs := c.processes()
		// Execs first, init last, as the kernel would have it.
		for execID, p := range procs {
			if execID != "" {
				s.vmDeadExit(ctx, c, p, now)
			}
		}
		if p := procs[""]; p != nil {
			s.vmDeadExit(ctx, c, p, now)
		}
	}
}

// bundleCheck is how often a shim checks that its VM's bundle is there.
const bundleCheck = 5 * time.Second

// watchBundle ends the shim once the bundles of its VM's containers are
// removed while it runs (abandoned): containerd cleaned the tasks up
// without deleting them through this shim (a client that abandoned them;
// containerd's `delete` after a failed call finds the shim alive and leaves
// it to clean up after itself), and nobody will call this shim again. The
// VM is stopped, what the shim made for its containers is removed, and the
// shim exits: no shim outlives its tasks' bundles (the runc shim's rule,
// Shutdown with no task left, holds too).
func (s *service) watchBundle(sb *sandbox, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for range t.C {
		if sb.isStopped() {
			return
		}
		if !s.abandoned(sb) {
			continue
		}
		ctx := namespaces.WithNamespace(context.Background(), sb.namespace)
		s.lifecycle.Lock()
		if sb.isStopped() || !s.abandoned(sb) {
			s.lifecycle.Unlock()
			if sb.isStopped() {
				return
			}
			continue
		}
		log.G(ctx).WithField("id", sb.id).Warn("the bundle of the task's VM was removed: stopping the VM, exiting")
		s.mu.Lock()
		var gone []*container
		for id, c := range s.containers {
			if c.sb == sb {
				gone = append(gone, c)
				delete(s.containers, id)
			}
		}
		if s.sb == sb {
			s.sb = nil
		}
		s.mu.Unlock()
		sb.stop(ctx, nil, false)
		for _, c := range gone {
			c.cleanup(ctx)
		}
		s.lifecycle.Unlock()
		s.sd.Shutdown()
		return
	}
}

// abandoned tells whether every container of sb lost its bundle: then
// containerd cleaned them up without this shim. In a group the VM's own
// bundle is its first container's, which containerd removes when that one
// is deleted (through the shim) while the others run on: one bundle left
// is enough. With no container left, the VM's own bundle counts.
func (s *service) abandoned(sb *sandbox) bool {
	s.mu.Lock()
	var bundles []string
	for _, c := range s.containers {
		if c.sb == sb {
			bundles = append(bundles, c.bundle)
		}
	}
	s.mu.Unlock()
	if len(bundles) == 0 {
		bundles = []string{sb.bundle}
	}
	for _, b := range bundles {
		if _, err := os.Stat(b); !errors.Is(err, os.ErrNotExist) {
			return false
		}
	}
	return true
}

func (s *service) vmDeadExit(ctx context.Context, c *container, p *hostProcess, at time.Time) {
	if !p.exit(vmDeadStatus, at) {
		return
	}
	// Nothing more can come from the guest: unblock containerd's readers.
	p.io.close()
	id := p.execID
	if id == "" {
		id = c.id
	}
	pid, _ := p.pids()
	s.publish(ctx, runtime.TaskExitEventTopic, &eventstypes.TaskExit{
		ContainerID: c.id,
		ID:          id,
		Pid:         pid,
		ExitStatus:  vmDeadStatus,
		ExitedAt:    protobuf.ToTimestamp(at),
	})
}

// forward sends one call to the agent of task id; errors come back in
// their errdefs classes.
//
// The guest has guestAnswerTimeout to answer: these calls are short, and
// one a guest never answers must not hold containerd's caller for ever.
func forward[R any](ctx context.Context, s *service, id string, call func(ctx context.Context, agent taskAPI.TTRPCTaskService) (R, error)) (R, error) {
	var none R
	c, err := s.task(id)
	if err != nil {
		return none, errgrpc.ToGRPC(err)
	}
	resp, silent, err := askGuest(ctx, guestAnswerTimeout, func(ctx context.Context) (R, error) { return call(ctx, c.sb.agent) })
	if err != nil {
		return none, errgrpc.ToGRPC(c.sb.answerErr(err, silent))
	}
	return resp, nil
}

func (s *service) publish(ctx context.Context, topic string, ev any) {
	if err := s.publisher.Publish(ctx, topic, ev); err != nil {
		log.G(ctx).WithError(err).WithField("topic", topic).Warn("publishing event")
	}
}

// stopVM is the shim's shutdown callback: no VM outlives its shim.
func (s *service) stopVM() {
	s.mu.Lock()
	sb := s.sb
	containers := make([]*container, 0, len(s.containers))
	for _, c := range s.containers {
		containers = append(containers, c)
	}
	s.mu.Unlock()
	if sb == nil {
		return
	}
	ctx := context.Background()
	var last *container
	for _, c := range containers {
		if last == nil {
			last = c
			continue
		}
		defer c.cleanup(ctx)
	}
	sb.stop(ctx, last, false)
}

func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.taskProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	// An exec's stdin opens at Start (startStdin).
	if err := p.io.startStdin(ctx); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	resp, err := c.sb.agent.Start(ctx, &taskAPI.StartRequest{ID: r.ID, ExecID: r.ExecID})
	if err != nil {
		return nil, errgrpc.ToGRPC(c.sb.agentErr(err))
	}
	p.setPids(c.hostPid(r.ExecID, resp.Pid), resp.Pid)
	p.markStarted()
	resp.Pid, _ = p.pids()
	if r.ExecID == "" && c.id == c.sb.id {
		c.sb.trace.mark(ctx, phaseStarted)
	}
	if r.ExecID == "" {
		// As the runtime spec says: a failed poststart hook is a warning.
		if err := runHooks(ctx, "poststart", c.hooks.poststart, c.hookState(specs.StateRunning)); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Warn("poststart hook failed")
		}
	}
	return resp, nil
}

func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	c, err := s.task(r.ID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	c.mu.Lock()
	_, exists := c.procs[r.ExecID]
	c.mu.Unlock()
	if exists || r.ExecID == "" {
		return nil, errgrpc.ToGRPC(fmt.Errorf("exec %q: %w", r.ExecID, errdefs.ErrAlreadyExists))
	}
	sb := c.sb
	p := &hostProcess{execID: r.ExecID, stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal, exited: make(chan struct{})}
	if p.io, err = openIO(ctx, sb.machine, r.ID, sb.namespace, r.Stdin, r.Stdout, r.Stderr, r.Terminal, nil); err != nil {
		return nil, errgrpc.ToGRPC(sb.agentErr(err))
	}
	_, err = sb.agent.Exec(ctx, &taskAPI.ExecProcessRequest{
		ID: r.ID, ExecID: r.ExecID, Terminal: r.Terminal, Spec: r.Spec,
		Stdin: p.io.ids[0], Stdout: p.io.ids[1], Stderr: p.io.ids[2],
	})
	if err != nil {
		p.io.close()
		return nil, errgrpc.ToGRPC(sb.agentErr(err))
	}
	c.mu.Lock()
	c.procs[r.ExecID] = p
	c.mu.Unlock()
	return &emptypb.Empty{}, nil
}

func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.taskProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	sb := c.sb
	var resp *taskAPI.StateResponse
	if !sb.vmDead() {
		var silent bool
		resp, silent, err = askGuest(ctx, stateAnswerTimeout, func(ctx context.Context) (*taskAPI.StateResponse, error) { return sb.agent.State(ctx, r) })
		switch {
		case err == nil || sb.vmDead():
		case silent:
			// containerd gives State 2 s (io.containerd.timeout.task.state)
			// and fails every call on the task without it, Kill included:
			// the shim answers with what it knows.
			log.G(ctx).WithField("id", r.ID).Warnf("the guest did not answer State within %s: answering with the shim's view", stateAnswerTimeout)
			resp = p.ownState()
		default:
			return nil, errgrpc.ToGRPC(sb.agentErr(err))
		}
	}
	host, _ := p.pids()
	if resp == nil {
		status, at := p.result()
		resp = &taskAPI.StateResponse{ID: r.ID, ExecID: r.ExecID, Pid: host, Status: task.Status_STOPPED, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}
		if r.ExecID != "" {
			resp.ID = r.ExecID
		}
	}
	// The host's view of the pid and the paths, and of which process this
	// is: the guest does not get to name another.
	resp.ID, resp.ExecID = r.ID, r.ExecID
	if r.ExecID != "" {
		resp.ID = r.ExecID
	}
	if host != 0 {
		resp.Pid = host
	}
	resp.Bundle = c.bundle
	resp.Stdin, resp.Stdout, resp.Stderr, resp.Terminal = p.stdin, p.stdout, p.stderr, p.terminal
	return resp, nil
}

func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	c, p, err := s.taskProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	sb := c.sb
	type result struct {
		resp *taskAPI.WaitResponse
		err  error
	}
	agentc := make(chan result, 1)
	go func() {
		resp, err := sb.agent.Wait(ctx, r)
		agentc <- result{resp, err}
	}()
	select {
	case res := <-agentc:
		if res.err == nil {
			// Exit ordering: the output reaches containerd first.
			p.io.drain(ctx, exitDrainTimeout)
			p.exit(res.resp.ExitStatus, protobuf.FromTimestamp(res.resp.ExitedAt))
		} else if !p.hasExited() {
			if !sb.vmDead() {
				return nil, errgrpc.ToGRPC(sb.agentErr(res.err))
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

// Delete of a container's init removes it from the VM; the VM ends with
// the last container.
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.taskProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	sb := c.sb
	if r.ExecID != "" {
		if !sb.vmDead() {
			if _, err := sb.deleteInGuest(ctx, r); err != nil && !sb.vmDead() {
				return nil, errgrpc.ToGRPC(err)
			}
		}
		p.io.close()
		c.mu.Lock()
		delete(c.procs, r.ExecID)
		c.mu.Unlock()
		status, at := p.result()
		pid, _ := p.pids()
		return &taskAPI.DeleteResponse{Pid: pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
	}

	s.lifecycle.Lock()
	defer s.lifecycle.Unlock()
	// The VM's last container, exited: the VM powers off with it, and
	// the guest's delete (runc's, its mounts, its bundle) would only undo
	// what goes with the VM. Its exit status is the one the shim has.
	last := s.lastOf(c) // Create and Delete hold lifecycle: it stays so
	withVM := p.hasExited() && last
	if !sb.vmDead() && !withVM {
		resp, err := sb.deleteInGuest(ctx, r)
		if err != nil && !sb.vmDead() {
			return nil, errgrpc.ToGRPC(err)
		}
		if resp != nil {
			p.exit(resp.ExitStatus, protobuf.FromTimestamp(resp.ExitedAt))
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			_, _ = sb.bundles.Remove(sctx, &agentapi.RemoveBundleRequest{Id: c.id})
			cancel()
		}
	}
	if !p.hasExited() {
		// Deleted without having exited: only a dead VM gets here.
		p.exit(vmDeadStatus, time.Now())
	}
	s.mu.Lock()
	delete(s.containers, c.id)
	if last && s.sb == sb {
		s.sb = nil
	}
	s.mu.Unlock()
	if last {
		sb.stop(ctx, c, withVM)
	} else {
		c.cleanup(context.WithoutCancel(ctx))
	}
	status, at := p.result()
	pid, _ := p.pids()
	s.publish(ctx, runtime.TaskDeleteEventTopic, &eventstypes.TaskDelete{
		ContainerID: c.id,
		ID:          c.id,
		Pid:         pid,
		ExitStatus:  status,
		ExitedAt:    protobuf.ToTimestamp(at),
	})
	return &taskAPI.DeleteResponse{Pid: pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// Pids lists the guest's processes of the task, the init process under the
// pid containerd knows it by (hostPid).
func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	resp, err := forward(ctx, s, r.ID, func(ctx context.Context, a taskAPI.TTRPCTaskService) (*taskAPI.PidsResponse, error) {
		return a.Pids(ctx, r)
	})
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
	return forward(ctx, s, r.ID, func(ctx context.Context, a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) { return a.Pause(ctx, r) })
}

func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	return forward(ctx, s, r.ID, func(ctx context.Context, a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) { return a.Resume(ctx, r) })
}

func (s *service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, errgrpc.ToGRPC(fmt.Errorf("checkpointing a VM task: %w", errdefs.ErrNotImplemented))
}

// Kill of a task whose VM died finds the process finished, like the runc
// shim for a process that exited (agentErr).
//
// A SIGKILL the agent does not answer in guestAnswerTimeout stops the VM:
// the processes die with it (watchVM reports their exits) and the call
// succeeds, as a SIGKILL of a process does.
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	if r.Signal != uint32(syscall.SIGKILL) {
		return forward(ctx, s, r.ID, func(ctx context.Context, a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) { return a.Kill(ctx, r) })
	}
	c, err := s.task(r.ID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	resp, silent, err := askGuest(ctx, guestAnswerTimeout, func(ctx context.Context) (*emptypb.Empty, error) { return c.sb.agent.Kill(ctx, r) })
	if err == nil || !silent {
		return resp, errgrpc.ToGRPC(c.sb.agentErr(err))
	}
	c.sb.hung(ctx, fmt.Sprintf("no answer to SIGKILL of %s in %s", r.ID, guestAnswerTimeout))
	return &emptypb.Empty{}, nil
}

func (s *service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	return forward(ctx, s, r.ID, func(ctx context.Context, a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) {
		return a.ResizePty(ctx, r)
	})
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
	return forward(ctx, s, r.ID, func(ctx context.Context, a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) { return a.Update(ctx, r) })
}

func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	return forward(ctx, s, r.ID, func(ctx context.Context, a taskAPI.TTRPCTaskService) (*taskAPI.StatsResponse, error) {
		return a.Stats(ctx, r)
	})
}

func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: Version}
	if c, err := s.task(r.ID); err == nil {
		resp.TaskPid, _ = c.initPids()
	}
	return resp, nil
}

// Shutdown ends the shim once its last container is deleted, as the runc
// shim does.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	live := len(s.containers) > 0
	s.mu.Unlock()
	if !live {
		s.sd.Shutdown()
	}
	return &emptypb.Empty{}, nil
}

// kernelArgs are the guest's kernel arguments beyond the backend's: the
// optional module groups to load (api/modgroups), then the options' own,
// which come last and may override. A grouped VM whose joining containers
// bring USB disks (VZ's only way, disk_hotplug = "usb") loads the USB group
// and scans a new disk at once, not after usb-storage's default second; so
// does every VZ VM with warm start, whose restored VMs get all their disks
// that way (vm/vz TemplatePlan), and whose template has the same arguments.
func kernelArgs(opts Options, grouped bool) []string {
	groups := slices.Clone(opts.GuestModules)
	var args []string
	warmVZ := opts.Backend == "vz" && opts.WarmStart != nil && *opts.WarmStart
	if (grouped && (opts.Backend == "vz" || opts.DiskHotplug == vm.DiskBusUSB)) || warmVZ {
		groups = append(groups, "usb")
		args = append(args, "usb_storage.delay_use=0")
	}
	if len(groups) > 0 {
		args = append(args, modgroups.Cmdline(groups))
	}
	return append(args, opts.KernelArgs...)
}
