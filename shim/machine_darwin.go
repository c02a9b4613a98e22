package shim

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
	"github.com/vz-shim/containerd-shim-vz/vm/vz"
)

// cleanupMachine has nothing to do on macOS: a VZ VM lives in the shim's
// own process, so a dead shim leaves no VM (and no files) behind.
func cleanupMachine(ctx context.Context, stateDir string) error { return nil }

func templateLayout(backend string, cfg vm.Config) (string, error) {
	if backend != "vz" {
		return "", fmt.Errorf("warm start on %s: %w", backend, errdefs.ErrNotImplemented)
	}
	return vz.TemplateLayout(cfg), nil
}
