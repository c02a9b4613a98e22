package shim

import (
	"path"
	"strings"

	"github.com/containerd/containerd/api/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// podShareTag is the share of a grouped VM whose contents the shim manages
// (podShare): the host paths of the containers that join the running VM
// are bind-mounted under it, as <container id>/<share tag>, since a
// running QEMU takes no new 9p device.
const podShareTag = "pod"

// podGuestDir is where a joining container's share tag is in the guest.
func podGuestDir(cid, tag string) string {
	return path.Join(guestSharesDir, podShareTag, cid, tag)
}

// redirectShares moves the spec's bind sources, which guestShares pointed
// at shares of their own (/run/vz-agent/shares/<tag>), into the pod share.
func redirectShares(spec *specs.Spec, cid string, shares []vm.Share) {
	for i, m := range spec.Mounts {
		if !isBind(m) {
			continue
		}
		for _, s := range shares {
			old := path.Join(guestSharesDir, s.Tag)
			if m.Source == old || strings.HasPrefix(m.Source, old+"/") {
				spec.Mounts[i].Source = podGuestDir(cid, s.Tag) + strings.TrimPrefix(m.Source, old)
				break
			}
		}
	}
}

// redirectRootfs points a directory rootfs's guest mount into the pod share.
func redirectRootfs(guest []*types.Mount, cid string) {
	for _, m := range guest {
		if m.Source == path.Join(guestSharesDir, rootfsShareTag) {
			m.Source = podGuestDir(cid, rootfsShareTag)
		}
	}
}
