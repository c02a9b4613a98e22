package shim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// podShareRoot holds the pod shares. Not in a bundle: containerd removes
// a deleted container's bundle with RemoveAll, which would cross into the
// bind mounts of the containers still running.
const podShareRoot = "/run/containerd-vz/pod"

// podShare is the host directory of a grouped VM's pod share.
type podShare struct {
	dir string
}

// podShareDir is the pod share of the VM booted by the task of bundle.
func podShareDir(bundle string) string { return filepath.Join(podShareRoot, netKey(bundle)) }

// newPodShare makes the pod share of the VM the task of bundle boots.
func newPodShare(bundle string) (*podShare, error) {
	p := &podShare{dir: podShareDir(bundle)}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, err
	}
	return p, nil
}

// add bind-mounts each share's host directory at dir/<cid>/<tag>, read-only
// where the share is. On error nothing of cid stays.
func (p *podShare) add(cid string, shares []vm.Share) (retErr error) {
	base := filepath.Join(p.dir, cid)
	if err := os.MkdirAll(base, 0o700); err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			p.remove(cid)
		}
	}()
	for _, s := range shares {
		target := filepath.Join(base, s.Tag)
		if err := os.Mkdir(target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(s.Path, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("sharing %s with the running VM: %w", s.Path, err)
		}
		if s.ReadOnly {
			if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("sharing %s read-only with the running VM: %w", s.Path, err)
			}
		}
	}
	return nil
}

// remove unmounts and removes what add made for cid.
func (p *podShare) remove(cid string) error {
	base := filepath.Join(p.dir, cid)
	ents, err := os.ReadDir(base)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, e := range ents {
		t := filepath.Join(base, e.Name())
		if err := unix.Unmount(t, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.RemoveAll(base)
}

// cleanupPodShare undoes the pod share of a shim that died (the VM of
// the task of bundle): its bind mounts first, and only then the directory.
func cleanupPodShare(bundle string) error {
	dir := podShareDir(bundle)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := mount.UnmountRecursive(dir, unix.MNT_DETACH); err != nil {
		return err
	}
	// The directory itself is no mount: UnmountRecursive left it, empty
	// of mounts.
	return os.RemoveAll(dir)
}
