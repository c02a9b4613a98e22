package shim

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// cleanupMachine has nothing to do on macOS: a VZ VM lives in the shim's
// own process, so a dead shim leaves no VM (and no files) behind.
func cleanupMachine(ctx context.Context, stateDir string) error { return nil }

// saveTemplate: VZ can save a VM (macOS 14+, Apple silicon), but a
// restored VZ VM cannot take the task's disks (no virtio-blk hot-plug), so
// warm start waits for USB mass storage or a share-based rootfs there.
func saveTemplate(ctx context.Context, backend string, cfg vm.Config, state string) error {
	return fmt.Errorf("warm start on %s: %w", backend, errdefs.ErrNotImplemented)
}

func templateLayout(backend string, cfg vm.Config) (string, error) {
	return "", fmt.Errorf("warm start on %s: %w", backend, errdefs.ErrNotImplemented)
}
