package snapshotter

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
)

// Mounts returns the mounts of an active or view snapshot.
func (s *Snapshotter) Mounts(ctx context.Context, key string) (_ []mount.Mount, err error) {
	var (
		snap storage.Snapshot
		info snapshots.Info
	)
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		snap, err = storage.GetSnapshot(ctx, key)
		if err != nil {
			return fmt.Errorf("failed to get snapshot mounts: %w", err)
		}
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil {
		return nil, err
	}
	// Prepare makes it; this only replaces one that went missing.
	if s.needsWritable(key, snap, info) {
		if err := s.ensureWritable(snap.ID, info); err != nil {
			return nil, err
		}
	}
	return s.mounts(ctx, snap, isUnpack(key, info))
}

// mounts builds the mount list of a snapshot, in the form of containerd's
// erofs snapshotter in block mode: mount 0 is the writable image of an
// active snapshot, then the read-only layers topmost first, then one
// format/ mount that the guest resolves after mounting the images.
//
// The layers of an extraction snapshot (unpack) are never merged: only our
// differ uses its mounts, and only mount 0; merging there would build one
// image per layer of a deep image for nothing.
func (s *Snapshotter) mounts(ctx context.Context, snap storage.Snapshot, unpack bool) ([]mount.Mount, error) {
	lowers, err := s.lowerMounts(ctx, snap.ParentIDs, !unpack)
	if err != nil {
		return nil, err
	}
	rwPath := filepath.Join(s.dir(snap.ID), WritableImage)

	if snap.Kind == snapshots.KindView {
		switch len(lowers) {
		case 0:
			return []mount.Mount{{Type: "ext4", Source: rwPath, Options: []string{"ro", "loop"}}}, nil
		case 1:
			return lowers, nil
		default:
			return append(lowers, mount.Mount{
				Type:    "format/overlay",
				Source:  "overlay",
				Options: []string{"ro", fmt.Sprintf("lowerdir={{ overlay 0 %d }}", len(lowers)-1)},
			}), nil
		}
	}

	rw := mount.Mount{Type: "ext4", Source: rwPath, Options: []string{"rw", "loop"}}
	if len(lowers) == 0 {
		// overlayfs needs a lower layer; a bind of a directory in the
		// image keeps the root out of the image's lost+found.
		return []mount.Mount{rw, {
			Type:    "format/mkdir/bind",
			Source:  "{{ mount 0 }}/upper",
			Options: []string{"X-containerd.mkdir.path={{ mount 0 }}/upper:0755", "rw", "rbind"},
		}}, nil
	}
	lowerdir := "lowerdir={{ mount 1 }}"
	if len(lowers) > 1 {
		lowerdir = fmt.Sprintf("lowerdir={{ overlay 1 %d }}", len(lowers))
	}
	ms := make([]mount.Mount, 0, len(lowers)+2)
	ms = append(ms, rw)
	ms = append(ms, lowers...)
	return append(ms, mount.Mount{
		Type:   "format/mkdir/overlay",
		Source: "overlay",
		Options: []string{
			"X-containerd.mkdir.path={{ mount 0 }}/upper:0755",
			"X-containerd.mkdir.path={{ mount 0 }}/work:0755",
			"workdir={{ mount 0 }}/work",
			"upperdir={{ mount 0 }}/upper",
			lowerdir,
		},
	}), nil
}

// lowerMounts returns the read-only layer mounts of a parent chain (topmost
// first). With merge, at most MaxLayers are returned: the lowest layers of
// a longer chain are served from one merged image.
func (s *Snapshotter) lowerMounts(ctx context.Context, parentIDs []string, merge bool) ([]mount.Mount, error) {
	keep := len(parentIDs)
	if merge && keep > s.cfg.MaxLayers {
		keep = s.cfg.MaxLayers - 1
	}
	ms := make([]mount.Mount, 0, keep+1)
	for _, id := range parentIDs[:keep] {
		ms = append(ms, layerMount(filepath.Join(s.dir(id), LayerImage)))
	}
	if keep == len(parentIDs) {
		return ms, nil
	}
	merged, err := s.ensureMerged(ctx, parentIDs[keep:])
	if err != nil {
		return nil, err
	}
	return append(ms, layerMount(merged)), nil
}

func layerMount(path string) mount.Mount {
	return mount.Mount{Type: "ext4", Source: path, Options: []string{"ro", "loop"}}
}
