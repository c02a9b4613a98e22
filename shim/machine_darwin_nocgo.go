//go:build darwin && !cgo

package shim

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// newMachine fails: Virtualization.framework is reached through cgo. This
// build exists so that the rest of the shim compiles for darwin anywhere.
func newMachine(ctx context.Context, backend string, cfg vm.Config) (vm.Machine, error) {
	return nil, fmt.Errorf("backend %q: built without cgo: the vz backend needs cgo and the macOS SDK (make darwin on a Mac): %w", backend, errdefs.ErrNotImplemented)
}

// saveTemplate: no VZ without cgo.
func saveTemplate(ctx context.Context, backend string, cfg vm.Config, state string) error {
	return fmt.Errorf("warm start on %s: built without cgo: %w", backend, errdefs.ErrNotImplemented)
}
