package shim

import (
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// podShare on macOS: none. There are no bind mounts to put a joining
// container's host directories under a share the VM has, and the other way,
// replacing the share of the running virtio-fs device
// (VZVirtioFileSystemDevice.share), is not exposed by Code-Hex/vz v3.7.1.
// The rootfs disks of a joining container do get in (vm/vz/hotplug.go).
type podShare struct {
	dir string
}

func (p *podShare) add(cid string, shares []vm.Share) error {
	if len(shares) == 0 {
		return nil
	}
	return fmt.Errorf("host directories (bind mounts, a directory rootfs) for a container that joins a running VZ VM: %w", errdefs.ErrNotImplemented)
}

func (p *podShare) remove(cid string) error { return nil }

func cleanupPodShare(bundle string) error { return nil }

// newPodShare: none on macOS (see podShare.add).
func newPodShare(bundle string) (*podShare, error) { return &podShare{}, nil }
