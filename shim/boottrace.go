package shim

import (
	"context"
	"sync"
	"time"

	"github.com/containerd/log"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

// bootTrace logs one line per phase of a VM's first container, from the
// shim's Create to the VM's end, each with when it ended since Create began
// ("at") and how long it took ("took"):
//
//	msg="boot trace" id=… phase="kernel entered" at=812ms took=95ms
//
// The phases only the guest sees (kernel entered, /init running, modules,
// agent serving, rootfs mounted) are measured with the guest's own clock and placed on the
// host's by the uptime the agent reports with them. make bench reads these
// lines (integration/bench_test.go).
type bootTrace struct {
	id    string
	start time.Time

	mu   sync.Mutex
	last time.Time
	seen map[string]bool
	// warm: the VM was restored from a template, whose guest booted
	// before this trace began: of the guest's phases only those after
	// the restore are logged.
	warm bool
}

// Boot phases, in the order they happen.
const (
	phasePrepared      = "prepared"       // spec, rootfs, network, VM config
	phaseTemplate      = "template ready" // warm start: found, or made
	phaseVMMStarted    = "vmm started"    // the VMM runs (QEMU's process, VZ's VM)
	phaseKernel        = "kernel entered" // guest uptime 0
	phaseInit          = "init running"   // the kernel ran /init
	phaseModules       = "modules loaded" // the agent loaded kernel modules
	phaseGuestNetwork  = "guest network"  // NICs configured from the command line
	phaseServing       = "agent serving"  // the agent listens
	phaseConnected     = "agent connected"
	phaseSetUp         = "guest set up"
	phaseRootfs        = "rootfs mounted"    // in the guest: disks, overlay
	phaseCreated       = "container created" // rootfs mounted, runc create done
	phaseStarted       = "container started"
	phaseFirstOutput   = "first output"
	phaseExited        = "exited"
	phaseVMGone        = "vm gone"
	bootTraceLogString = "boot trace"
)

// guestPhases name the agent's phases (agentapi.BootPhase.Name) in the trace.
var guestPhases = map[string]string{
	"init":    phaseInit,
	"modules": phaseModules,
	"network": phaseGuestNetwork,
	"serving": phaseServing,
	"rootfs":  phaseRootfs,
}

func newBootTrace(id string) *bootTrace {
	now := time.Now()
	return &bootTrace{id: id, start: now, last: now, seen: make(map[string]bool)}
}

// mark logs that phase ended now. A phase is logged once; a nil trace
// logs nothing.
func (t *bootTrace) mark(ctx context.Context, phase string) {
	t.markAt(ctx, phase, time.Now())
}

func (t *bootTrace) markAt(ctx context.Context, phase string, at time.Time) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.seen[phase] {
		return
	}
	t.seen[phase] = true
	// A guest phase placed on the host's clock may come out a hair before
	// the host phase logged before it.
	took := max(at.Sub(t.last), 0)
	if at.After(t.last) {
		t.last = at
	}
	log.G(ctx).WithFields(log.Fields{
		"id":    t.id,
		"phase": phase,
		"at":    at.Sub(t.start).Round(time.Millisecond),
		"took":  took.Round(time.Millisecond),
	}).Info(bootTraceLogString)
}

// setWarm says whether the VM is restored from a template (warm).
func (t *bootTrace) setWarm(warm bool) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.warm = warm
}

// guest logs the guest's phases, which the agent reported at uptime,
// answering at host time answered: the guest's uptime u is then
// answered-(uptime-u) on the host's clock.
func (t *bootTrace) guest(ctx context.Context, phases []*agentapi.BootPhase, uptime time.Duration, answered time.Time) {
	if t == nil || uptime <= 0 {
		return
	}
	boot := answered.Add(-uptime)
	t.mu.Lock()
	warm := t.warm
	t.mu.Unlock()
	if !warm {
		t.markAt(ctx, phaseKernel, boot)
	}
	for _, p := range phases {
		name, ok := guestPhases[p.Name]
		if !ok {
			name = "guest " + p.Name
		}
		if warm && name != phaseRootfs {
			continue
		}
		t.markAt(ctx, name, boot.Add(p.Uptime.AsDuration()))
	}
}

// guestInfo asks the agent for its boot phases and logs those not logged
// yet. Its error is for a guest that did not answer in guestAnswerTimeout,
// a hung guest; other errors are only logged.
func (t *bootTrace) guestInfo(ctx context.Context, sys agentapi.SystemService) error {
	if t == nil {
		return nil
	}
	info, silent, err := askGuest(ctx, guestAnswerTimeout, func(ctx context.Context) (*agentapi.InfoResponse, error) {
		return sys.Info(ctx, &agentapi.InfoRequest{})
	})
	if silent {
		return errNoAnswer(guestAnswerTimeout)
	}
	if err != nil {
		log.G(ctx).WithError(err).Warn("asking the agent for its boot phases")
		return nil
	}
	t.guest(ctx, info.Boot, info.Uptime.AsDuration(), time.Now())
	return nil
}
