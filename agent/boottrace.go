package agent

import (
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

// BootTrace records when each step of the guest's boot ended, at the
// guest's uptime; Info reports them to the shim, which logs its boot trace
// with the guest's own clock for the phases only the guest sees.
type BootTrace struct {
	mu     sync.Mutex
	uptime func() time.Duration
	phases []*agentapi.BootPhase
}

// NewBootTrace returns a trace that reads the uptime with uptime.
func NewBootTrace(uptime func() time.Duration) *BootTrace {
	return &BootTrace{uptime: uptime}
}

// Mark records that phase ended now, unless it was recorded before: a
// phase that repeats (a container's rootfs mounted) counts the first time.
func (b *BootTrace) Mark(phase string) {
	if b == nil {
		return
	}
	b.MarkAt(phase, b.uptime())
}

// MarkAt records that phase ended at uptime, unless it was recorded before.
func (b *BootTrace) MarkAt(phase string, uptime time.Duration) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.phases {
		if p.Name == phase {
			return
		}
	}
	b.phases = append(b.phases, &agentapi.BootPhase{Name: phase, Uptime: durationpb.New(uptime)})
}

// Phases returns the phases recorded so far, in order.
func (b *BootTrace) Phases() []*agentapi.BootPhase {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*agentapi.BootPhase(nil), b.phases...)
}
