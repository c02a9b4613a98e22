package shim

import (
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// podShare on macOS: a running VZ VM's shares are fixed at boot (vz v3.7.1
// does not expose the running virtio-fs device, DESIGN.md §10).
type podShare struct {
	dir string
}

func (p *podShare) add(cid string, shares []vm.Share) error {
	if len(shares) == 0 {
		return nil
	}
	return fmt.Errorf("host directories for a container that joins a running VZ VM: %w", errdefs.ErrNotImplemented)
}

func (p *podShare) remove(cid string) error { return nil }

func cleanupPodShare(bundle string) error { return nil }

// newPodShare: none on macOS (see podShare.add).
func newPodShare(bundle string) (*podShare, error) { return &podShare{}, nil }
