package shim

import (
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// DiskSourcePrefix marks a guest mount source that names a disk by its
// identifier; the agent resolves it to the device (agent/disks.go).
const diskSourcePrefix = "disk:"

// blockTypes are the filesystems whose mounts are images the guest mounts
// from a disk: the host never mounts them (so this works on macOS too).
var blockTypes = map[string]bool{"ext4": true, "ext3": true, "ext2": true, "xfs": true, "erofs": true}

// rootfsShareTag is the share of a directory rootfs.
const rootfsShareTag = "rootfs"

// rootfsPlan is how the container's rootfs reaches the guest: block images
// as disks, or a host directory as a share.
type rootfsPlan struct {
	disks      []vm.Disk
	share      *vm.Share
	agentShare *agentapi.Share
	// guest are the rootfs mounts the agent performs.
	guest []*types.Mount
	// hostMounted is the bundle's rootfs when the shim mounted the
	// snapshot there (overlayfs, native): unmounted at the end.
	hostMounted string
}

// planRootfs decides how the rootfs mounts of Create reach the guest.
// Block images (blockfile, our snapshotter) become disks that only the
// guest mounts. Directory snapshots (overlayfs, native) are mounted on the
// host at the bundle's rootfs, as the runc shim does, and that directory is
// shared into the VM; so is a rootfs the bundle already holds.
//
// Disks are named diskPrefix0, diskPrefix1...: unique in the VM.
func planRootfs(bundle string, mounts []*types.Mount, fstype, diskPrefix string) (*rootfsPlan, error) {
	nblock, nchain := 0, 0
	for _, m := range mounts {
		switch {
		case blockTypes[m.Type]:
			nblock++
		case isChainMount(m):
			nchain++
		}
	}
	switch {
	case nblock > 0 && nblock+nchain < len(mounts):
		return nil, fmt.Errorf("rootfs mixes block images and directories: %w", errdefs.ErrNotImplemented)
	case nblock == 0 && nchain > 0:
		return nil, fmt.Errorf("rootfs mount chain without block images: %w", errdefs.ErrNotImplemented)
	case nblock > 0:
		disks, guest, err := rootfsDisks(mounts, diskPrefix)
		if err != nil {
			return nil, err
		}
		return &rootfsPlan{disks: disks, guest: guest}, nil
	}
	p := &rootfsPlan{}
	dir := filepath.Join(bundle, "rootfs")
	if len(mounts) > 0 {
		if err := os.MkdirAll(dir, 0o711); err != nil {
			return nil, err
		}
		if err := mountHostRootfs(mounts, dir); err != nil {
			return nil, err
		}
		p.hostMounted = dir
	} else if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("no rootfs mounts and no rootfs directory in the bundle: %w", errdefs.ErrNotFound)
	}
	p.share = &vm.Share{Tag: rootfsShareTag, Path: dir}
	p.agentShare = &agentapi.Share{Tag: rootfsShareTag, Fstype: fstype}
	p.guest = []*types.Mount{{Type: "bind", Source: path.Join(guestSharesDir, rootfsShareTag), Options: []string{"rbind", "rw"}}}
	return p, nil
}

// rootfsDisks turns block-image rootfs mounts into disks for the VM and the
// mounts the agent performs with them.
func rootfsDisks(mounts []*types.Mount, prefix string) ([]vm.Disk, []*types.Mount, error) {
	var (
		disks []vm.Disk
		guest []*types.Mount
	)
	for i, m := range mounts {
		if isChainMount(m) {
			// Its templates refer to mounts by index: the order is kept.
			guest = append(guest, m)
			continue
		}
		if !blockTypes[m.Type] {
			return nil, nil, fmt.Errorf("rootfs mount of type %q is not a block image (%s): %w", m.Type, blockTypeList(), errdefs.ErrInvalidArgument)
		}
		fi, err := os.Stat(m.Source)
		if err != nil {
			return nil, nil, fmt.Errorf("rootfs image: %w", err)
		}
		if !fi.Mode().IsRegular() && fi.Mode()&os.ModeDevice == 0 {
			return nil, nil, fmt.Errorf("rootfs image %s is neither a file nor a block device: %w", m.Source, errdefs.ErrInvalidArgument)
		}
		id := fmt.Sprintf("%s%d", prefix, i)
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

// isChainMount reports whether m is a mount the guest resolves from the
// mounts before it: "format/…" and "mkdir/…" types, as containerd's erofs
// snapshotter in block mode and our own snapshotter hand out (agent/mountchain.go).
func isChainMount(m *types.Mount) bool {
	return strings.HasPrefix(m.Type, "format/") || strings.HasPrefix(m.Type, "mkdir/")
}

func blockTypeList() string {
	return strings.Join(slices.Sorted(maps.Keys(blockTypes)), ", ")
}
