package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/console"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"
)

var (
	errInvalid      = errdefs.ErrInvalidArgument
	errPrecondition = errdefs.ErrFailedPrecondition
)

const (
	// earlyExitTTL is how long the exit of a pid that no process claims is
	// kept: exec'd processes may exit before runc exec returns their pid.
	earlyExitTTL = time.Minute
	// deleteExitTimeout bounds the wait for a killed created container.
	deleteExitTimeout = 10 * time.Second
)

// taskService serves containerd's task API (containerd.task.v3.Task) over
// runc. Unlike containerd's runc shim it serves every container of the
// guest; the shim forwards its calls with little translation.
type taskService struct {
	runcBinary string
	runcRoot   string
	events     *eventQueue
	streams    *streams
	shutdown   func()
	boot       *BootTrace

	mu sync.Mutex
	// vmGoing: a Shutdown with Now came; the VM powers off with its
	// containers (stopAll).
	vmGoing    bool
	containers map[string]*container // a nil value reserves an id during Create
	byPid      map[int]*process
	early      map[int]runc.Exit
}

var _ taskAPI.TTRPCTaskService = (*taskService)(nil)

func (s *taskService) get(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.containers[id]
	if c == nil {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

func (s *taskService) getProcess(id, execID string) (*container, *process, error) {
	c, err := s.get(id)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.execs[execID]
	if p == nil {
		return nil, nil, fmt.Errorf("exec %q in container %q: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, p, nil
}

func (s *taskService) publish(c *container, topic string, ev any) {
	publishIn(c.namespace, s.events, topic, ev)
}

func (s *taskService) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	if err := identifiers.Validate(r.ID); err != nil {
		return nil, err
	}
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, fmt.Errorf("restoring from a checkpoint: %w", errdefs.ErrNotImplemented)
	}
	ns, ok := namespaces.Namespace(ctx)
	if !ok {
		ns = namespaces.Default
	}
	s.mu.Lock()
	if _, exists := s.containers[r.ID]; exists {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %q: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	s.containers[r.ID] = nil
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(s.containers, r.ID)
			s.mu.Unlock()
		}
	}()

	spec, err := loadSpec(r.Bundle)
	if err != nil {
		return nil, err
	}
	c := &container{
		id:        r.ID,
		namespace: ns,
		bundle:    r.Bundle,
		spec:      spec,
		mounts:    mount.FromProto(r.Rootfs),
		execs:     make(map[string]*process),
		runc: &runc.Runc{
			Command:      s.runcBinary,
			Root:         filepath.Join(s.runcRoot, ns),
			Log:          filepath.Join(r.Bundle, "log.json"),
			LogFormat:    runc.JSON,
			PdeathSignal: unix.SIGKILL,
		},
	}
	if err := c.mountRootfs(); err != nil {
		return nil, err
	}
	s.boot.Mark("rootfs") // the first container's, in the boot trace
	defer func() {
		if retErr != nil {
			c.unmountRootfs(ctx)
		}
	}()

	pio, err := newProcIO(s.streams, r.Stdin, r.Stdout, r.Stderr, r.Terminal, 0, 0)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			pio.close()
		}
	}()
	p := newProcess(r.ID, "", r.Terminal, r.Stdin, r.Stdout, r.Stderr, pio)
	c.init = p

	opts := &runc.CreateOpts{
		PidFile: filepath.Join(r.Bundle, "init.pid"),
		IO:      pio.runcIO(),
	}
	var sock *runc.Socket
	if r.Terminal {
		if sock, err = runc.NewTempConsoleSocket(); err != nil {
			return nil, fmt.Errorf("creating console socket: %w", err)
		}
		defer sock.Close()
		opts.ConsoleSocket = sock
	}
	if err := c.runc.Create(ctx, r.ID, r.Bundle, opts); err != nil {
		err = runtimeError(c.runc, err, "runc create")
		c.forceDelete(ctx)
		return nil, err
	}
	if sock != nil {
		tty, err := sock.ReceiveMaster()
		if err == nil {
			err = pio.startTerminal(ctx, tty)
		}
		if err != nil {
			c.forceDelete(ctx)
			return nil, fmt.Errorf("receiving the container's terminal: %w", err)
		}
	} else {
		pio.startPipes(ctx)
	}
	pid, err := runc.ReadPidFile(opts.PidFile)
	if err != nil {
		c.forceDelete(ctx)
		return nil, fmt.Errorf("reading init pid: %w", err)
	}
	c.cgroup = loadCgroup(ctx, pid)
	if c.oom, err = c.cgroup.watchOOM(ctx, s.events, c); err != nil {
		log.G(ctx).WithError(err).WithField("id", r.ID).Warn("not watching for OOM kills")
	}

	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()
	s.registerPid(ctx, p, pid, time.Time{})

	s.publish(c, runtime.TaskCreateEventTopic, &eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO: &eventstypes.TaskIO{
			Stdin:    r.Stdin,
			Stdout:   r.Stdout,
			Stderr:   r.Stderr,
			Terminal: r.Terminal,
		},
		Pid: uint32(pid),
	})
	return &taskAPI.CreateTaskResponse{Pid: uint32(pid)}, nil
}

func loadSpec(bundle string) (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("bundle %q has no config.json: %w", bundle, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("reading config.json: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("malformed config.json in %q: %v: %w", bundle, err, errInvalid)
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("config.json in %q has no process: %w", bundle, errInvalid)
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return nil, fmt.Errorf("config.json in %q has no root path: %w", bundle, errInvalid)
	}
	return &spec, nil
}

// mountRootfs mounts the rootfs mounts of Create onto the spec's root, or
// checks that a pre-made root exists when there are none.
func (c *container) mountRootfs() error {
	root := c.spec.Root.Path
	if !filepath.IsAbs(root) {
		root = filepath.Join(c.bundle, root)
	}
	if len(c.mounts) == 0 {
		if _, err := os.Stat(root); err != nil {
			return fmt.Errorf("rootfs %q: %w", root, errdefs.ErrNotFound)
		}
		return nil
	}
	if err := os.MkdirAll(root, 0o711); err != nil {
		return fmt.Errorf("creating rootfs mountpoint: %w", err)
	}
	for _, m := range c.mounts {
		if m.Source != "" && strings.HasPrefix(m.Source, "/") && (m.Type == "bind" || m.Type == "rbind") {
			if _, err := os.Stat(m.Source); err != nil {
				return fmt.Errorf("rootfs source %q: %w", m.Source, errdefs.ErrNotFound)
			}
		}
	}
	mounts, err := resolveDisks("/sys/block", "/dev", c.mounts)
	if err != nil {
		return err
	}
	if isChain(mounts) {
		chain, err := mountChain(mounts, root, c.chainDir())
		if err != nil {
			_ = os.RemoveAll(c.chainDir())
			return fmt.Errorf("mounting rootfs: %w", err)
		}
		c.rootfs, c.chain = root, chain
		return nil
	}
	if err := mount.All(mounts, root); err != nil {
		c.rootfs = root
		_ = mount.UnmountRecursive(root, unix.MNT_DETACH)
		c.rootfs = ""
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("mounting rootfs: %v: %w", err, errdefs.ErrNotFound)
		}
		return fmt.Errorf("mounting rootfs: %w", err)
	}
	c.rootfs = root
	return nil
}

// chainDir holds the mountpoints of the rootfs mount chain's inner
// mounts (agent/mountchain.go).
func (c *container) chainDir() string { return filepath.Join(c.bundle, "mounts") }

func (c *container) unmountRootfs(ctx context.Context) {
	if c.rootfs == "" {
		return
	}
	if c.chain != nil {
		if err := unmountChain(c.chain); err != nil {
			log.G(ctx).WithError(err).WithField("rootfs", c.rootfs).Warn("unmounting rootfs")
			return
		}
		c.rootfs, c.chain = "", nil
		if err := os.RemoveAll(c.chainDir()); err != nil {
			log.G(ctx).WithError(err).Warn("removing the rootfs mount chain's directories")
		}
		return
	}
	if err := mount.UnmountRecursive(c.rootfs, unix.MNT_DETACH); err != nil {
		log.G(ctx).WithError(err).WithField("rootfs", c.rootfs).Warn("unmounting rootfs")
		return
	}
	c.rootfs = ""
}

// runcDelete runs runc delete --force, again after a moment when it fails:
// with a host pid namespace, runc freezes the cgroup to kill what is left,
// and a process still exiting makes that fail at times ("invalid state
// transition from stopped to paused", seen with runc 1.1.5 on cgroup v1).
func (c *container) runcDelete(ctx context.Context) error {
	var err error
	for range 3 {
		if err = c.runc.Delete(ctx, c.id, &runc.DeleteOpts{Force: true}); err == nil || isNotExist(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return runtimeError(c.runc, err, "runc delete")
}

// forceDelete removes whatever runc may have made of a container whose
// creation failed.
func (c *container) forceDelete(ctx context.Context) {
	if err := c.runc.Delete(ctx, c.id, &runc.DeleteOpts{Force: true}); err != nil && !isNotExist(err) {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("runc delete after a failed create")
	}
}

func isNotExist(err error) bool {
	return err != nil && strings.Contains(err.Error(), "does not exist")
}

// runtimeError prefers runc's own last error message over its exit status.
func runtimeError(r *runc.Runc, err error, what string) error {
	if msg := lastRuntimeError(r); msg != "" {
		return fmt.Errorf("%s: %s: %w", what, msg, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func lastRuntimeError(r *runc.Runc) string {
	f, err := os.Open(r.Log)
	if err != nil {
		return ""
	}
	defer f.Close()
	var msg string
	dec := json.NewDecoder(f)
	for {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if err := dec.Decode(&entry); err != nil {
			return msg
		}
		if entry.Level == "error" {
			msg = strings.TrimSpace(entry.Msg)
		}
	}
}

// registerPid ties a pid to its process, or delivers the exit that arrived
// before the pid was known. Exits older than notBefore belong to an earlier
// process that had the same pid.
func (s *taskService) registerPid(ctx context.Context, p *process, pid int, notBefore time.Time) {
	s.mu.Lock()
	p.mu.Lock()
	p.pid = pid
	p.mu.Unlock()
	e, exited := s.early[pid]
	if exited && !e.Timestamp.Before(notBefore) {
		delete(s.early, pid)
	} else {
		exited = false
		s.byPid[pid] = p
	}
	s.mu.Unlock()
	if exited {
		s.exited(ctx, p, e.Status)
	}
}

// handleExits takes the exits that the reaper sees.
func (s *taskService) handleExits(ctx context.Context, exits <-chan runc.Exit) {
	for e := range exits {
		s.mu.Lock()
		p, ok := s.byPid[e.Pid]
		if ok {
			delete(s.byPid, e.Pid)
		} else {
			// Mostly runc's own commands; sometimes an exec that beat
			// registerPid.
			s.early[e.Pid] = e
			for pid, old := range s.early {
				if time.Since(old.Timestamp) > earlyExitTTL {
					delete(s.early, pid)
				}
			}
		}
		s.mu.Unlock()
		if ok {
			s.exited(ctx, p, e.Status)
		}
	}
}

// exited records a process's exit. Wait returns and TaskExit goes out only
// after the process's output reached the host.
func (s *taskService) exited(ctx context.Context, p *process, status int) {
	if !p.stopped(status) {
		return
	}
	c, err := s.get(p.containerID)
	if err != nil {
		log.G(ctx).WithError(err).Error("exit of a process without a container")
		return
	}
	if p.execID == "" && !c.hasOwnPidNamespace() {
		// Sharing a pid namespace, the other processes outlive init.
		go func() {
			if err := c.runc.Kill(ctx, c.id, int(unix.SIGKILL), &runc.KillOpts{All: true}); err != nil && !isNotExist(err) {
				log.G(ctx).WithError(err).WithField("id", c.id).Debug("killing the container's processes after init exit")
			}
		}()
	}
	p.io.processExited()
	go func() {
		p.io.wait()
		pid, _, code, at := p.snapshot()
		// Under starting: a Start still publishing its event goes first.
		p.starting.Lock()
		s.publish(c, runtime.TaskExitEventTopic, &eventstypes.TaskExit{
			ContainerID: p.containerID,
			ID:          p.id(),
			Pid:         uint32(pid),
			ExitStatus:  code,
			ExitedAt:    protobuf.ToTimestamp(at),
		})
		p.starting.Unlock()
		close(p.done)
	}()
}

func (s *taskService) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p.starting.Lock()
	defer p.starting.Unlock()
	if _, status, _, _ := p.snapshot(); status != task.Status_CREATED {
		return nil, fmt.Errorf("process %q is %s, not created: %w", p.id(), strings.ToLower(status.String()), errPrecondition)
	}
	if p.execID != "" {
		if err := s.startExec(ctx, c, p); err != nil {
			return nil, err
		}
		pid, _, _, _ := p.snapshot()
		return &taskAPI.StartResponse{Pid: uint32(pid)}, nil
	}
	if err := c.runc.Start(ctx, c.id); err != nil {
		return nil, runtimeError(c.runc, err, "runc start")
	}
	p.setStatus(task.Status_RUNNING)
	pid, _, _, _ := p.snapshot()
	s.publish(c, runtime.TaskStartEventTopic, &eventstypes.TaskStart{ContainerID: c.id, Pid: uint32(pid)})
	return &taskAPI.StartResponse{Pid: uint32(pid)}, nil
}

// startExec runs a created exec; c.mu is held.
func (s *taskService) startExec(ctx context.Context, c *container, p *process) (retErr error) {
	if _, status, _, _ := c.init.snapshot(); status != task.Status_RUNNING {
		return fmt.Errorf("container %q is %s: %w", c.id, strings.ToLower(status.String()), errPrecondition)
	}
	if c.paused {
		return fmt.Errorf("container %q is paused: %w", c.id, errPrecondition)
	}
	defer func() {
		if retErr != nil {
			// A failed start is final, as in the runc shim; Wait must not hang.
			p.io.close()
			if p.stopped(255) {
				close(p.done)
			}
		}
	}()
	opts := &runc.ExecOpts{
		PidFile: filepath.Join(c.bundle, "exec-"+p.execID+".pid"),
		IO:      p.io.runcIO(),
		Detach:  true,
	}
	defer os.Remove(opts.PidFile)
	var sock *runc.Socket
	if p.terminal {
		var err error
		if sock, err = runc.NewTempConsoleSocket(); err != nil {
			return fmt.Errorf("creating console socket: %w", err)
		}
		defer sock.Close()
		opts.ConsoleSocket = sock
	}
	started := time.Now()
	if err := c.runc.Exec(ctx, c.id, *p.spec, opts); err != nil {
		return runtimeError(c.runc, err, "runc exec")
	}
	if sock != nil {
		tty, err := sock.ReceiveMaster()
		if err == nil {
			err = p.io.startTerminal(ctx, tty)
		}
		if err != nil {
			return fmt.Errorf("receiving the exec's terminal: %w", err)
		}
	} else {
		p.io.startPipes(ctx)
	}
	pid, err := runc.ReadPidFile(opts.PidFile)
	if err != nil {
		return fmt.Errorf("reading exec pid: %w", err)
	}
	p.setStatus(task.Status_RUNNING)
	s.publish(c, runtime.TaskExecStartedEventTopic, &eventstypes.TaskExecStarted{
		ContainerID: c.id,
		ExecID:      p.execID,
		Pid:         uint32(pid),
	})
	s.registerPid(ctx, p, pid, started)
	return nil
}

func (s *taskService) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (_ *emptypb.Empty, retErr error) {
	if err := identifiers.Validate(r.ExecID); err != nil {
		return nil, err
	}
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if r.Spec == nil {
		return nil, fmt.Errorf("exec %q has no process spec: %w", r.ExecID, errInvalid)
	}
	var spec specs.Process
	if err := json.Unmarshal(r.Spec.Value, &spec); err != nil {
		return nil, fmt.Errorf("malformed process spec for exec %q: %v: %w", r.ExecID, err, errInvalid)
	}
	if len(spec.Args) == 0 {
		return nil, fmt.Errorf("exec %q has no args: %w", r.ExecID, errInvalid)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, status, _, _ := c.init.snapshot(); status == task.Status_STOPPED {
		return nil, fmt.Errorf("container %q has stopped: %w", c.id, errPrecondition)
	}
	if _, ok := c.execs[r.ExecID]; ok {
		return nil, fmt.Errorf("exec %q in container %q: %w", r.ExecID, c.id, errdefs.ErrAlreadyExists)
	}
	pio, err := newProcIO(s.streams, r.Stdin, r.Stdout, r.Stderr, r.Terminal, int(spec.User.UID), int(spec.User.GID))
	if err != nil {
		return nil, err
	}
	p := newProcess(c.id, r.ExecID, r.Terminal, r.Stdin, r.Stdout, r.Stderr, pio)
	p.spec = &spec
	c.execs[r.ExecID] = p
	s.publish(c, runtime.TaskExecAddedEventTopic, &eventstypes.TaskExecAdded{ContainerID: c.id, ExecID: r.ExecID})
	return &emptypb.Empty{}, nil
}

func (s *taskService) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	pid, status, code, at := p.snapshot()
	c.mu.Lock()
	if p.execID == "" && c.paused && status == task.Status_RUNNING {
		status = task.Status_PAUSED
	}
	c.mu.Unlock()
	resp := &taskAPI.StateResponse{
		ID:         p.id(),
		Bundle:     c.bundle,
		Pid:        uint32(pid),
		Status:     status,
		Stdin:      p.stdin,
		Stdout:     p.stdout,
		Stderr:     p.stderr,
		Terminal:   p.terminal,
		ExitStatus: code,
		ExecID:     p.execID,
	}
	if status == task.Status_STOPPED {
		resp.ExitedAt = protobuf.ToTimestamp(at)
	}
	return resp, nil
}

func (s *taskService) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	_, _, code, at := p.snapshot()
	return &taskAPI.WaitResponse{ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

func (s *taskService) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	pid, status, _, _ := p.snapshot()
	switch {
	case status == task.Status_STOPPED:
		return nil, fmt.Errorf("process %q already finished: %w", p.id(), errdefs.ErrNotFound)
	case p.execID != "" && status == task.Status_CREATED:
		return nil, fmt.Errorf("exec %q has not started: %w", p.execID, errPrecondition)
	case p.execID != "":
		if err := unix.Kill(pid, unix.Signal(r.Signal)); err != nil {
			return nil, killError(err)
		}
	default:
		if err := c.runc.Kill(ctx, c.id, int(r.Signal), &runc.KillOpts{All: r.All}); err != nil {
			return nil, killError(runtimeError(c.runc, err, "runc kill"))
		}
	}
	return &emptypb.Empty{}, nil
}

func killError(err error) error {
	msg := strings.ToLower(err.Error())
	if errors.Is(err, unix.ESRCH) || strings.Contains(msg, "no such process") ||
		strings.Contains(msg, "process already finished") || strings.Contains(msg, "container not running") {
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	return err
}

func (s *taskService) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	pid, status, _, _ := p.snapshot()
	if status == task.Status_RUNNING || status == task.Status_PAUSED {
		return nil, fmt.Errorf("cannot delete running process %q: %w", p.id(), errPrecondition)
	}
	if p.execID != "" {
		if status == task.Status_CREATED {
			if p.stopped(0) {
				close(p.done)
			}
		}
		<-p.done
		p.io.close()
		delete(c.execs, p.execID)
		_, _, code, at := p.snapshot()
		return &taskAPI.DeleteResponse{Pid: uint32(pid), ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at)}, nil
	}

	if status == task.Status_CREATED {
		// runc delete --force kills the waiting init; its exit arrives
		// through the reaper like any other.
		if err := c.runcDelete(ctx); err != nil {
			return nil, err
		}
		select {
		case <-p.done:
		case <-time.After(deleteExitTimeout):
			return nil, fmt.Errorf("init of %q did not exit after runc delete: %w", c.id, errdefs.ErrUnavailable)
		}
	} else {
		<-p.done
		if err := c.runcDelete(ctx); err != nil {
			return nil, err
		}
	}
	for id, e := range c.execs {
		e.io.close()
		delete(c.execs, id)
	}
	p.io.close()
	if c.oom != nil {
		c.oom.Close()
	}
	c.unmountRootfs(ctx)
	os.Remove(filepath.Join(c.bundle, "init.pid"))

	s.mu.Lock()
	delete(s.containers, c.id)
	s.mu.Unlock()

	_, _, code, at := p.snapshot()
	s.publish(c, runtime.TaskDeleteEventTopic, &eventstypes.TaskDelete{
		ContainerID: c.id,
		ID:          c.id,
		Pid:         uint32(pid),
		ExitStatus:  code,
		ExitedAt:    protobuf.ToTimestamp(at),
	})
	return &taskAPI.DeleteResponse{Pid: uint32(pid), ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

func (s *taskService) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	pids, err := c.runc.Ps(ctx, c.id)
	if err != nil {
		return nil, runtimeError(c.runc, err, "runc ps")
	}
	execByPid := make(map[int]string)
	c.mu.Lock()
	for id, e := range c.execs {
		if pid, _, _, _ := e.snapshot(); pid != 0 {
			execByPid[pid] = id
		}
	}
	c.mu.Unlock()
	resp := &taskAPI.PidsResponse{}
	for _, pid := range pids {
		info := &task.ProcessInfo{Pid: uint32(pid)}
		if id, ok := execByPid[pid]; ok {
			a, err := anyToProto(&options.ProcessDetails{ExecID: id})
			if err != nil {
				return nil, err
			}
			info.Info = a
		}
		resp.Processes = append(resp.Processes, info)
	}
	return resp, nil
}

func (s *taskService) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	return s.setPaused(ctx, r.ID, true)
}

func (s *taskService) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	return s.setPaused(ctx, r.ID, false)
}

func (s *taskService) setPaused(ctx context.Context, id string, pause bool) (*emptypb.Empty, error) {
	c, err := s.get(id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, status, _, _ := c.init.snapshot(); status != task.Status_RUNNING {
		return nil, fmt.Errorf("container %q is %s: %w", id, strings.ToLower(status.String()), errPrecondition)
	}
	if c.paused == pause {
		return &emptypb.Empty{}, nil
	}
	if pause {
		if err := c.runc.Pause(ctx, id); err != nil {
			return nil, runtimeError(c.runc, err, "runc pause")
		}
		s.publish(c, runtime.TaskPausedEventTopic, &eventstypes.TaskPaused{ContainerID: id})
	} else {
		if err := c.runc.Resume(ctx, id); err != nil {
			return nil, runtimeError(c.runc, err, "runc resume")
		}
		s.publish(c, runtime.TaskResumedEventTopic, &eventstypes.TaskResumed{ContainerID: id})
	}
	c.paused = pause
	return &emptypb.Empty{}, nil
}

func (s *taskService) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, fmt.Errorf("checkpoint: %w", errdefs.ErrNotImplemented)
}

func (s *taskService) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if err := p.io.resize(console.WinSize{Width: uint16(r.Width), Height: uint16(r.Height)}); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (s *taskService) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin {
		p.io.closeStdin()
	}
	return &emptypb.Empty{}, nil
}

func (s *taskService) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if r.Resources == nil {
		return nil, fmt.Errorf("update without resources: %w", errInvalid)
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources.Value, &res); err != nil {
		return nil, fmt.Errorf("malformed resources: %v: %w", err, errInvalid)
	}
	if err := c.runc.Update(ctx, c.id, &res); err != nil {
		return nil, runtimeError(c.runc, err, "runc update")
	}
	return &emptypb.Empty{}, nil
}

func (s *taskService) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	m, err := c.cgroup.stats()
	if err != nil {
		return nil, err
	}
	a, err := anyToProto(m)
	if err != nil {
		return nil, err
	}
	return &taskAPI.StatsResponse{Stats: a}, nil
}

func (s *taskService) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: Version}
	if c, err := s.get(r.ID); err == nil {
		pid, _, _, _ := c.init.snapshot()
		resp.TaskPid = uint32(pid)
	}
	return resp, nil
}

// Shutdown stops the agent once no container is left; like the runc shim,
// it is a no-op while containers exist.
func (s *taskService) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	n := len(s.containers)
	if r.Now {
		s.vmGoing = true
	}
	s.mu.Unlock()
	// Now: the shim powers the VM off with its last container, whose
	// init exited and which it did not delete here (shim/service.go
	// Delete): the guest's state of it goes with the VM.
	if (n == 0 || r.Now) && s.shutdown != nil {
		s.shutdown()
	}
	return &emptypb.Empty{}, nil
}

// stopAll kills and deletes every container: the agent is going away.
func (s *taskService) stopAll(ctx context.Context) {
	s.mu.Lock()
	var cs []*container
	for _, c := range s.containers {
		if c != nil {
			cs = append(cs, c)
		}
	}
	going := s.vmGoing
	s.mu.Unlock()
	for _, c := range cs {
		_, status, _, _ := c.init.snapshot()
		if going && status == task.Status_STOPPED {
			// No runc delete: its state, cgroup and mounts are the VM's,
			// which powers off; the guest's shutdown syncs and unmounts
			// the rootfs.
			c.init.io.close()
			continue
		}
		if status != task.Status_STOPPED && status != task.Status_CREATED {
			if c.paused {
				_, _ = s.setPaused(ctx, c.id, false)
			}
			if err := c.runc.Kill(ctx, c.id, int(unix.SIGKILL), &runc.KillOpts{All: true}); err != nil && !isNotExist(err) {
				log.G(ctx).WithError(err).WithField("id", c.id).Warn("killing container at shutdown")
			}
			select {
			case <-c.init.done:
			case <-time.After(deleteExitTimeout):
				log.G(ctx).WithField("id", c.id).Warn("container did not exit at shutdown")
			}
		}
		if _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: c.id}); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Warn("deleting container at shutdown")
		}
	}
}
