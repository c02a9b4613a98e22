//go:build !hostile

package agent

import (
	"context"
	"net"

	"github.com/containerd/ttrpc"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/transport"
)

// faults is the misbehaviour of the hostile test build (faults_hostile.go,
// go build -tags hostile; SECURITY.md). A release agent has none: every hook
// here hands back what it was given.
type faults struct{}

func newFaults(Config) *faults { return nil }

func (*faults) interceptor() ttrpc.UnaryServerInterceptor { return nil }

func (*faults) events(s agentapi.EventsService) agentapi.EventsService { return s }

func (*faults) listener(_ uint32, l net.Listener) net.Listener { return l }

func (*faults) serving(context.Context, transport.ListenerFactory) {}

// outputEnded reports whether the fault layer took over the end of an
// output stream (a release agent half-closes it).
func (*faults) outputEnded(net.Conn) bool { return false }
