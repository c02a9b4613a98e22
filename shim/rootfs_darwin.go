package shim

import (
	"fmt"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
)

// macOS cannot mount Linux snapshots: rootfs must come as block images.
func mountHostRootfs(mounts []*types.Mount, dir string) error {
	return fmt.Errorf("a directory snapshot (%s) cannot be mounted on macOS; use a block snapshotter: %w", mounts[0].Type, errdefs.ErrNotImplemented)
}

func unmountHostRootfs(dir string) error { return nil }
