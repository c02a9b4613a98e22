package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Prepare creates an active snapshot of parent.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.createSnapshot(ctx, snapshots.KindActive, key, parent, opts)
}

// View creates a read-only snapshot of parent.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.createSnapshot(ctx, snapshots.KindView, key, parent, opts)
}

// isUnpack reports whether an active snapshot is one containerd's unpacker
// prepared to extract a layer into. Such a snapshot only ever receives a
// layer.ext4 from our differ and is committed at once, so it never needs a
// writable image: skipping it saves creating (and deleting) one per layer.
// The unpacker labels these snapshots with the chain id and keys them
// "extract-…" (containerd's metadata layer prefixes keys with
// "<namespace>/<n>/", and passes the label through).
func isUnpack(key string, info snapshots.Info) bool {
	if _, ok := info.Labels[snapshots.LabelSnapshotRef]; ok {
		return true
	}
	base := key
	if i := strings.LastIndex(key, "/"); i >= 0 {
		base = key[i+1:]
	}
	return strings.HasPrefix(base, snapshots.UnpackKeyPrefix+"-")
}

func (s *Snapshotter) createSnapshot(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) ([]mount.Mount, error) {
	var (
		snap storage.Snapshot
		info snapshots.Info
		dir  string
	)
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		snap, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...)
		if err != nil {
			return fmt.Errorf("failed to create snapshot: %w", err)
		}
		if _, info, _, err = storage.GetInfo(ctx, key); err != nil {
			return err
		}
		// The directory is made inside the write transaction: Cleanup reads
		// the id map in a write transaction too, so it never sees a
		// directory whose metadata is not committed yet.
		dir = s.dir(snap.ID)
		if err := os.Mkdir(dir, 0o700); err != nil {
			dir = ""
			return fmt.Errorf("failed to create snapshot directory: %w", err)
		}
		if s.needsWritable(key, snap, info) {
			return s.ensureWritable(snap.ID, info)
		}
		return nil
	})
	if err != nil {
		if dir != "" {
			if rerr := os.RemoveAll(dir); rerr != nil {
				log.G(ctx).WithError(rerr).WithField("dir", dir).Warn("failed to remove snapshot directory")
			}
		}
		return nil, err
	}
	ms, err := s.mounts(ctx, snap, isUnpack(key, info))
	if err != nil {
		// Merging lower layers can fail (a blob gone from the content
		// store); a Prepare that fails must leave nothing behind.
		if rerr := s.Remove(context.WithoutCancel(ctx), key); rerr != nil {
			log.G(ctx).WithError(rerr).WithField("key", key).Warn("failed to remove snapshot after failed Prepare")
		}
		return nil, err
	}
	return ms, nil
}

// needsWritable reports whether a snapshot gets a writable image: every
// active snapshot except an unpack target, and an empty view (it has no
// layer to show, so it shows an empty file system).
func (s *Snapshotter) needsWritable(key string, snap storage.Snapshot, info snapshots.Info) bool {
	if snap.Kind == snapshots.KindView {
		return len(snap.ParentIDs) == 0
	}
	return !isUnpack(key, info)
}

// ensureWritable creates the snapshot's writable image unless it exists. It
// is written under a temporary name and renamed, so a crash never leaves a
// half-made image under the real name.
func (s *Snapshotter) ensureWritable(id string, info snapshots.Info) error {
	s.rwMu.Lock()
	defer s.rwMu.Unlock()
	path := filepath.Join(s.dir(id), WritableImage)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	size, err := s.writableSize(info)
	if err != nil {
		return err
	}
	tmp := path + tmpSuffix
	os.Remove(tmp)
	if err := s.createWritable(tmp, size); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("failed to create writable image for snapshot %s: %w", id, err)
	}
	return os.Rename(tmp, path)
}

// Commit turns an active snapshot the differ applied a layer into into a
// committed one; its writable image, if any, is discarded.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	var id string
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		sid, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		if info.Kind != snapshots.KindActive {
			return fmt.Errorf("snapshot %q is not active: %w", key, errdefs.ErrFailedPrecondition)
		}
		id = sid
		dir := s.dir(id)
		if _, err := os.Stat(filepath.Join(dir, LayerImage)); err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				return err
			}
			// Only layers applied by our differ can be committed. A
			// container's changes live in its writable ext4 image, which
			// the host cannot read without mounting it (and the host may
			// be a Mac, or unprivileged): committing it (nerdctl commit)
			// would need the guest to produce the diff.
			return fmt.Errorf("snapshot %q has no applied layer: committing a container's writable layer is not supported by the vz snapshotter: %w",
				key, errdefs.ErrNotImplemented)
		}
		usage, err := s.diskUsage(dir, LayerImage)
		if err != nil {
			return err
		}
		if _, err := storage.CommitActive(ctx, key, name, usage, opts...); err != nil {
			return fmt.Errorf("failed to commit snapshot %s: %w", key, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(s.dir(id), WritableImage)); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).WithField("id", id).Warn("failed to remove writable image of committed snapshot")
	}
	return nil
}

// Remove removes a snapshot and its files. A snapshot with children cannot
// be removed (FailedPrecondition, from the metastore).
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	var id string
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		id, _, err = storage.Remove(ctx, key)
		if err != nil {
			return fmt.Errorf("failed to remove snapshot %s: %w", key, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The metadata is gone: failures here leave orphans for Cleanup and
	// must not fail the call.
	if err := os.RemoveAll(s.dir(id)); err != nil {
		log.G(ctx).WithError(err).WithField("id", id).Warn("failed to remove snapshot directory; Cleanup will retry")
	}
	// A merged image named after this snapshot contains it; merged images of
	// chains below it do not, and one above it cannot exist since a snapshot
	// with children cannot be removed.
	if err := os.Remove(s.mergedPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).WithField("id", id).Warn("failed to remove merged image; Cleanup will retry")
	}
	return nil
}

// Cleanup removes snapshot directories and merged images that no snapshot
// refers to, left by failed removals or crashes.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	s.mergeMu.Lock() // keeps in-flight merges' temp files
	defer s.mergeMu.Unlock()

	var ids map[string]string
	// A write transaction, so that no snapshot is being created meanwhile
	// (see createSnapshot).
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		ids, err = storage.IDMap(ctx)
		if err != nil {
			return err
		}
		var rm []string
		entries, err := os.ReadDir(SnapshotsDir(s.root))
		if err != nil {
			return err
		}
		for _, e := range entries {
			if _, ok := ids[e.Name()]; !ok {
				rm = append(rm, filepath.Join(SnapshotsDir(s.root), e.Name()))
			}
		}
		for _, p := range rm {
			if err := os.RemoveAll(p); err != nil {
				log.G(ctx).WithError(err).WithField("path", p).Warn("cleanup failed")
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(filepath.Join(s.root, mergedDir))
	if err != nil {
		return err
	}
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".ext4")
		if _, known := ids[id]; ok && known {
			continue
		}
		p := filepath.Join(s.root, mergedDir, e.Name())
		if err := os.RemoveAll(p); err != nil {
			log.G(ctx).WithError(err).WithField("path", p).Warn("cleanup failed")
		}
	}
	return nil
}
