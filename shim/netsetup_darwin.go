package shim

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// taskNet on macOS is VZ's NAT or nothing: there are no network namespaces
// to join.
type taskNet struct {
	userNAT bool
}

func newTaskNet(ctx context.Context, bundle, namespace, id string, hs hostSpec, opts Options) (*taskNet, error) {
	if hs.netnsPath != "" {
		return nil, fmt.Errorf("joining the network namespace at %s: there are none on macOS: %w", hs.netnsPath, errdefs.ErrInvalidArgument)
	}
	return &taskNet{userNAT: opts.Network == networkUser}, nil
}

func (n *taskNet) configure(cfg *vm.Config) { cfg.Network = n.userNAT }

func (n *taskNet) plug(ctx context.Context, m vm.Launcher) error { return nil }

func (n *taskNet) guest() *agentapi.Network { return nil }

func (n *taskNet) teardown(ctx context.Context) error { return nil }

func cleanupNetwork(ctx context.Context, bundle string) error { return nil }

func (n *taskNet) hasNetwork() bool { return n.userNAT }

func (n *taskNet) sandboxPath() string { return "" }

// loopbackIn: there are no network namespaces on macOS (sandboxPath is "").
func loopbackIn(ctx context.Context, ns string) func(fn func() error) error {
	return func(func() error) error {
		return fmt.Errorf("network namespace %s: there are none on macOS: %w", ns, errdefs.ErrNotImplemented)
	}
}
