package shim

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
	"github.com/vz-shim/containerd-shim-vz/vm/qemu"
)

func newMachine(ctx context.Context, backend string, cfg vm.Config) (vm.Machine, error) {
	if backend != "qemu" {
		return nil, fmt.Errorf("backend %q: only qemu runs on Linux: %w", backend, errdefs.ErrInvalidArgument)
	}
	return qemu.New(ctx, cfg)
}

// cleanupMachine stops a VM that a dead shim left behind.
func cleanupMachine(ctx context.Context, stateDir string) error {
	return qemu.Cleanup(stateDir)
}

// saveTemplate boots cfg as a warm-start template and saves it to state.
func saveTemplate(ctx context.Context, backend string, cfg vm.Config, state string) error {
	return qemu.SaveTemplate(ctx, cfg, state)
}

// templateLayout identifies the backend's template layout and VMM.
func templateLayout(backend string, cfg vm.Config) (string, error) {
	return qemu.TemplateLayout(cfg)
}
