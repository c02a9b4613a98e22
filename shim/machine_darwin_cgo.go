//go:build darwin && cgo

package shim

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
	"github.com/vz-shim/containerd-shim-vz/vm/vz"
)

func newMachine(ctx context.Context, backend string, cfg vm.Config) (vm.Machine, error) {
	if backend != "vz" {
		return nil, fmt.Errorf("backend %q: only vz runs on macOS: %w", backend, errdefs.ErrInvalidArgument)
	}
	return vz.New(ctx, cfg)
}

// saveTemplate saves a VZ template (vm/vz TemplatePlan): Apple silicon
// with macOS 15; elsewhere errdefs.ErrNotImplemented, and tasks boot cold.
func saveTemplate(ctx context.Context, backend string, cfg vm.Config, state string) error {
	if backend != "vz" {
		return fmt.Errorf("warm start on %s: %w", backend, errdefs.ErrNotImplemented)
	}
	return vz.SaveTemplate(ctx, cfg, state)
}
