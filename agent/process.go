package agent

import (
	"os"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/mount"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// process is a container's init process or one of its execs. Its lifecycle
// follows containerd's runc shim: created -> running -> stopped -> deleted.
type process struct {
	containerID string
	execID      string // empty for the init process
	terminal    bool
	stdin       string // stream ids, reported back by State
	stdout      string
	stderr      string
	spec        *specs.Process // execs only
	io          *procIO

	// starting is held while the process is started and its start event
	// published, so that its exit event cannot overtake it.
	starting sync.Mutex

	mu         sync.Mutex
	pid        int
	status     task.Status
	exitStatus uint32
	exitedAt   time.Time
	// done is closed once the exit is recorded and the output drained:
	// Wait returns and TaskExit is published only then.
	done chan struct{}
}

func newProcess(containerID, execID string, terminal bool, stdin, stdout, stderr string, pio *procIO) *process {
	return &process{
		containerID: containerID,
		execID:      execID,
		terminal:    terminal,
		stdin:       stdin,
		stdout:      stdout,
		stderr:      stderr,
		io:          pio,
		status:      task.Status_CREATED,
		done:        make(chan struct{}),
	}
}

// id is the process's id in events: the container's for init.
func (p *process) id() string {
	if p.execID == "" {
		return p.containerID
	}
	return p.execID
}

func (p *process) snapshot() (pid int, status task.Status, exitStatus uint32, exitedAt time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid, p.status, p.exitStatus, p.exitedAt
}

func (p *process) setStatus(s task.Status) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status != task.Status_STOPPED {
		p.status = s
	}
}

// stopped records an exit; it reports false if one was already recorded.
func (p *process) stopped(status int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status == task.Status_STOPPED {
		return false
	}
	p.status = task.Status_STOPPED
	p.exitStatus = uint32(status)
	p.exitedAt = time.Now()
	return true
}

// container is one runc container and the state the agent keeps for it.
type container struct {
	id        string
	namespace string
	bundle    string
	spec      *specs.Spec
	runc      *runc.Runc
	rootfs    string        // where Create mounted the rootfs mounts, if any
	chain     []string      // mountpoints of a mount chain, in mount order
	mounts    []mount.Mount // as given to Create, for the TaskCreate event
	cgroup    *cgroup       // nil if unknown
	oom       *os.File      // the OOM watch, closed at delete
	init      *process

	// mu serialises the lifecycle calls on the container (start, exec,
	// delete, pause, resume) so that runc never sees two at once.
	mu     sync.Mutex
	execs  map[string]*process
	paused bool
}

// hasOwnPidNamespace tells whether the kernel takes the container's other
// processes down with init; otherwise the agent has to.
func (c *container) hasOwnPidNamespace() bool {
	if c.spec.Linux == nil {
		return false
	}
	for _, ns := range c.spec.Linux.Namespaces {
		if ns.Type == specs.PIDNamespace && ns.Path == "" {
			return true
		}
	}
	return false
}
