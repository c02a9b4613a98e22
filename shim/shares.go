package shim

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/vm"
	"github.com/vz-shim/containerd-shim-vz/vm/vz"
)

// guestSharesDir is where the agent mounts each share, as <dir>/<tag>. It
// must match the agent's (agent/shares.go); the shim does not import the
// agent package, which is the guest's.
const guestSharesDir = "/run/vz-agent/shares"

// Share filesystem types, as the agent knows them.
const (
	fstype9p       = "9p"
	fstypeVirtiofs = "virtiofs"
)

// shareFSType is the filesystem the guest mounts shares with: virtio-fs
// under VZ, 9p under QEMU.
func shareFSType(backend string) string {
	if backend == "vz" {
		return fstypeVirtiofs
	}
	return fstype9p
}

// shareDevice is the device that holds every share under backend, each
// as a directory of it (VZ's multiple-directory share), or "" where each
// share is a device of its own (9p under QEMU).
func shareDevice(backend string) string {
	if backend == "vz" {
		return vz.SharesTag
	}
	return ""
}

// isBind tells whether m bind-mounts a host path.
func isBind(m specs.Mount) bool {
	return m.Type == "bind" || hasOption(m.Options, "bind") || hasOption(m.Options, "rbind")
}

// guestShares turns the spec's bind mounts of host directories into VM
// shares: each distinct host directory (or the directory of a bind-mounted
// host file) becomes one vm.Share with its own tag ("s0", "s1", ... in the
// order of the spec's mounts), read-only when every bind of it says "ro".
// The spec's mount source is rewritten to the path where the agent mounts
// that share in the guest (/run/vz-agent/shares/<tag>[/<file>]); the
// mount's own options are kept, so a "ro" bind is read-only in the
// container even when the share is not. Only what the spec asks for is
// shared: other mounts (proc, sysfs, tmpfs...) are left alone.
// It returns the shares for vm.Config.Shares and for SetupRequest.Shares.
func guestShares(spec *specs.Spec, fstype string) ([]vm.Share, []*agentapi.Share, error) {
	var (
		shares []vm.Share
		byDir  = map[string]int{} // resolved host directory -> index in shares
	)
	for i, m := range spec.Mounts {
		if !isBind(m) {
			continue
		}
		if !filepath.IsAbs(m.Source) {
			return nil, nil, fmt.Errorf("bind mount of %q into %s: the source must be an absolute host path: %w", m.Source, m.Destination, errdefs.ErrInvalidArgument)
		}
		// Resolve symlinks on the host: the guest cannot follow them out
		// of the share, and two spellings of one directory are one share.
		src, err := filepath.EvalSymlinks(m.Source)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, nil, fmt.Errorf("bind mount of %s into %s: %w", m.Source, m.Destination, errdefs.ErrNotFound)
			}
			return nil, nil, fmt.Errorf("bind mount of %s into %s: %w", m.Source, m.Destination, err)
		}
		fi, err := os.Stat(src)
		if err != nil {
			return nil, nil, fmt.Errorf("bind mount of %s into %s: %w", m.Source, m.Destination, err)
		}
		dir, file := src, ""
		switch {
		case fi.IsDir():
		case fi.Mode().IsRegular():
			// A file cannot be shared alone: share its directory and bind
			// the file from there.
			dir, file = filepath.Dir(src), filepath.Base(src)
		default:
			return nil, nil, fmt.Errorf("bind mount of %s into %s: %s is not a directory or regular file, it cannot be shared into the VM: %w", m.Source, m.Destination, fi.Mode().Type(), errdefs.ErrNotImplemented)
		}
		ro := hasOption(m.Options, "ro")
		n, ok := byDir[dir]
		if !ok {
			n = len(shares)
			byDir[dir] = n
			shares = append(shares, vm.Share{Tag: "s" + strconv.Itoa(n), Path: dir, ReadOnly: ro})
		} else if !ro {
			// One rw bind makes the share rw; the ro binds stay ro in
			// the container through their own options.
			shares[n].ReadOnly = false
		}
		target := path.Join(guestSharesDir, shares[n].Tag)
		if file != "" {
			target = path.Join(target, file)
		}
		spec.Mounts[i].Source = target
	}
	agentShares := make([]*agentapi.Share, len(shares))
	for i, s := range shares {
		agentShares[i] = &agentapi.Share{Tag: s.Tag, Fstype: fstype, Readonly: s.ReadOnly}
	}
	return shares, agentShares, nil
}
