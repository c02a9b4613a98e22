package shim

import (
	"context"
	"fmt"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// diskRemoveTimeout bounds the wait for the guest to let a container's
// hot-plugged disk go.
const diskRemoveTimeout = 30 * time.Second

// container is one task of the shim, running in the sandbox's VM: its spec,
// rootfs and processes.
type container struct {
	id, bundle string
	sb         *sandbox
	spec       *specs.Spec
	hooks      hostHooks
	hostRootfs string   // the snapshot the shim mounted on the host
	hotDisks   []string // disks hot-plugged for it (containers that joined)
	podShared  bool     // its host paths are in the sandbox's pod share

	mu      sync.Mutex
	procs   map[string]*hostProcess // "" is init
	cleaned bool
}

// hostProcess is what the shim keeps of a process in the guest.
type hostProcess struct {
	execID                string
	stdin, stdout, stderr string
	terminal              bool
	io                    *hostIO

	mu       sync.Mutex
	pid      uint32 // what containerd sees (container.hostPid)
	guestPid uint32
	started  bool
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

func (p *hostProcess) markStarted() {
	p.mu.Lock()
	p.started = true
	p.mu.Unlock()
}

// ownState is the process's state as the shim knows it, for a guest that
// does not answer: created or running until its exit is known; nil once it
// is (State answers an exited process from its result).
func (p *hostProcess) ownState() *taskAPI.StateResponse {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.exited:
		return nil
	default:
	}
	st := task.Status_CREATED
	if p.started {
		st = task.Status_RUNNING
	}
	return &taskAPI.StateResponse{Status: st, Stdin: p.stdin, Stdout: p.stdout, Stderr: p.stderr, Terminal: p.terminal}
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

func (p *hostProcess) setPids(host, guest uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pid, p.guestPid = host, guest
}

func (p *hostProcess) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

func (c *container) process(execID string) (*hostProcess, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.procs[execID]
	if p == nil {
		return nil, fmt.Errorf("process %q of task %q: %w", execID, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}

// processes is a copy of the container's processes.
func (c *container) processes() map[string]*hostProcess {
	c.mu.Lock()
	defer c.mu.Unlock()
	procs := make(map[string]*hostProcess, len(c.procs))
	for k, v := range c.procs {
		procs[k] = v
	}
	return procs
}

// hostPid is the pid containerd knows a process by. A container's own
// (init) is the VMM's, a host process in the VM's network namespace, as
// Kata does: containerd's clients look at /proc/<task pid> (nerdctl inspect
// reads the task's network there, CRI its pod's namespaces). Execs keep
// their guest pids. A VMM in the shim's own process (VZ) leaves guest pids.
func (c *container) hostPid(execID string, guestPid uint32) uint32 {
	if execID == "" {
		if vp := c.sb.vmmPid(); vp > 0 {
			return vp
		}
	}
	return guestPid
}

// initPids are the init process's pids, 0 before it exists.
func (c *container) initPids() (host, guest uint32) {
	p, err := c.process("")
	if err != nil {
		return 0, 0
	}
	return p.pids()
}

// hookState is the container's state as its OCI hooks read it; the pid is
// the VMM's, the task's process on the host.
func (c *container) hookState(status specs.ContainerState) specs.State {
	st := specs.State{ID: c.id, Status: status, Pid: int(c.sb.vmmPid()), Bundle: c.bundle}
	if c.spec != nil {
		st.Version, st.Annotations = c.spec.Version, c.spec.Annotations
	}
	return st
}

// runCreateHooks runs the prestart and createRuntime hooks on the host.
func (c *container) runCreateHooks(ctx context.Context) error {
	state := c.hookState(specs.StateCreating)
	if err := runHooks(ctx, "prestart", c.hooks.prestart, state); err != nil {
		return err
	}
	return runHooks(ctx, "createRuntime", c.hooks.createRuntime, state)
}

// cleanup releases what the host holds for the container once it is gone
// from the guest (or the VM is): its stdio, hot-plugged disks, host rootfs
// mount, then its poststop hooks. It runs once.
func (c *container) cleanup(ctx context.Context) {
	c.mu.Lock()
	if c.cleaned {
		c.mu.Unlock()
		return
	}
	c.cleaned = true
	procs := make([]*hostProcess, 0, len(c.procs))
	for _, p := range c.procs {
		procs = append(procs, p)
	}
	c.mu.Unlock()
	for _, p := range procs {
		if p.io != nil {
			p.io.close()
		}
	}
	if hp, ok := c.sb.machine.(vm.DiskHotplugger); ok && !c.sb.vmDead() {
		for _, id := range c.hotDisks {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), diskRemoveTimeout)
			if err := hp.RemoveDisk(rctx, id); err != nil {
				log.G(ctx).WithError(err).WithField("id", c.id).Warn("removing a container's disk from the VM")
			}
			cancel()
		}
	}
	if c.podShared {
		if err := c.sb.pod.remove(c.id); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Warn("removing the container's host paths from the pod share")
		}
	}
	// After the guest let go: QEMU serves a shared rootfs until then.
	if c.hostRootfs != "" {
		if err := unmountHostRootfs(c.hostRootfs); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Warn("unmounting the rootfs")
		}
	}
	// Hooks that undo what createRuntime hooks made (nerdctl's CNI
	// teardown), once the container is gone.
	if err := runHooks(ctx, "poststop", c.hooks.poststop, c.hookState(specs.StateStopped)); err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("poststop hook failed")
	}
}
