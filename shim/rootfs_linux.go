package shim

import (
	"fmt"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/mount"
)

// mountHostRootfs mounts a directory snapshot (overlay, bind) on the host,
// as the runc shim does, so that one directory can be shared into the VM.
func mountHostRootfs(mounts []*types.Mount, dir string) error {
	if err := mount.All(mount.FromProto(mounts), dir); err != nil {
		_ = mount.UnmountRecursive(dir, 0)
		return fmt.Errorf("mounting the rootfs on the host: %w", err)
	}
	return nil
}

func unmountHostRootfs(dir string) error {
	return mount.UnmountRecursive(dir, 0)
}
