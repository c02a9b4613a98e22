package shim

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// DiskSourcePrefix marks a guest mount source that names a disk by its
// identifier; the agent resolves it to the device (agent/disks.go).
const diskSourcePrefix = "disk:"

// blockTypes are the filesystems whose mounts are images the guest mounts
// from a disk: the host never mounts them (so this works on macOS too).
var blockTypes = map[string]bool{"ext4": true, "ext3": true, "ext2": true, "xfs": true, "erofs": true}

// rootfsDisks turns the rootfs mounts of Create into disks for the VM and
// the mounts the agent performs with them.
func rootfsDisks(mounts []*types.Mount) ([]vm.Disk, []*types.Mount, error) {
	if len(mounts) == 0 {
		return nil, nil, fmt.Errorf("a rootfs from the bundle directory needs a shared directory, which is not supported yet; use a block snapshotter (blockfile): %w", errdefs.ErrNotImplemented)
	}
	var (
		disks []vm.Disk
		guest []*types.Mount
	)
	for i, m := range mounts {
		if !blockTypes[m.Type] {
			return nil, nil, fmt.Errorf("rootfs mount of type %q: only block images (%s) are supported yet: %w", m.Type, blockTypeList(), errdefs.ErrNotImplemented)
		}
		fi, err := os.Stat(m.Source)
		if err != nil {
			return nil, nil, fmt.Errorf("rootfs image: %w", err)
		}
		if !fi.Mode().IsRegular() && fi.Mode()&os.ModeDevice == 0 {
			return nil, nil, fmt.Errorf("rootfs image %s is neither a file nor a block device: %w", m.Source, errdefs.ErrInvalidArgument)
		}
		id := fmt.Sprintf("rootfs%d", i)
		var opts []string
		ro := false
		for _, o := range m.Options {
			switch o {
			case "loop":
				// The disk is the loop device's replacement.
				continue
			case "ro":
				ro = true
			}
			opts = append(opts, o)
		}
		disks = append(disks, vm.Disk{ID: id, Path: m.Source, ReadOnly: ro})
		guest = append(guest, &types.Mount{Type: m.Type, Source: diskSourcePrefix + id, Target: m.Target, Options: opts})
	}
	return disks, guest, nil
}

func blockTypeList() string {
	return strings.Join(slices.Sorted(maps.Keys(blockTypes)), ", ")
}
