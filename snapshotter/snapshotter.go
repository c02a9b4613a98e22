// Package snapshotter implements containerd's snapshots.Snapshotter with
// ext4 images: each committed layer is one read-only ext4 image
// (root/snapshots/<id>/layer.ext4, written by the differ in
// snapshotter/differ), each active snapshot gets a sparse writable ext4
// image (rw.ext4). Mounts follow containerd's erofs snapshotter in block
// mode: the images are "ext4" loop mounts and the stacking is a
// "format/mkdir/overlay" mount with {{ mount N }} templates, resolved inside
// the guest. Nothing here mounts anything on the host.
package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/snapshotter/ext4"
)

// LabelWritableSize overrides the size in bytes of one active snapshot's
// writable image. It carries the inherited-label prefix so that it passes
// containerd's metadata layer.
const LabelWritableSize = "containerd.io/snapshot/vz.writable-size"

// Defaults of Config.
const (
	DefaultWritableSize = 10 << 30
	DefaultMaxLayers    = 16
)

// Config configures a Snapshotter.
type Config struct {
	// WritableSize is the apparent size of a writable image (sparse).
	WritableSize int64
	// MaxLayers bounds the read-only layer mounts of one mount list; longer
	// chains have their lowest layers merged into one image.
	MaxLayers int
	// Content reads layer blobs back for merging (containerd's content store).
	// Without it, chains longer than MaxLayers cannot be mounted.
	Content content.Provider
	// Limits bound merged images.
	Limits ext4.Limits
}

// Snapshotter is the ext4 snapshotter. Create it with New.
type Snapshotter struct {
	root string
	cfg  Config
	ms   *storage.MetaStore

	// mergeMu serializes merges: they are rare, large, and two mount
	// requests for the same chain must not build the same image twice.
	mergeMu sync.Mutex
	// rwMu serializes lazy creation of writable images.
	rwMu sync.Mutex

	// createWritable makes a writable image; tests may replace it.
	createWritable func(path string, size int64) error
	// merge builds a merged image and decompress opens a layer blob; tests
	// may replace them.
	merge      func(ctx context.Context, layers []func() (io.ReadCloser, error), dst string, lim ext4.Limits) (ext4.Stats, error)
	decompress func(io.Reader) (io.ReadCloser, error)
}

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// New opens (creating if needed) a snapshotter rooted at root.
func New(root string, cfg Config) (*Snapshotter, error) {
	if cfg.WritableSize <= 0 {
		cfg.WritableSize = DefaultWritableSize
	}
	if cfg.MaxLayers <= 0 {
		cfg.MaxLayers = DefaultMaxLayers
	}
	if cfg.Limits == (ext4.Limits{}) {
		cfg.Limits = ext4.DefaultLimits()
	}
	// Mount sources must be absolute: the shim opens them, not us.
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{root, SnapshotsDir(root), filepath.Join(root, mergedDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	removeTemps(root)
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, err
	}
	return &Snapshotter{
		root:           root,
		cfg:            cfg,
		ms:             ms,
		createWritable: ext4.CreateWritable,
		merge:          ext4.Merge,
		decompress:     ext4.Decompress,
	}, nil
}

// Root returns the snapshotter's root directory.
func (s *Snapshotter) Root() string { return s.root }

func (s *Snapshotter) dir(id string) string {
	return filepath.Join(SnapshotsDir(s.root), id)
}

func (s *Snapshotter) mergedPath(id string) string {
	return filepath.Join(s.root, mergedDir, id+".ext4")
}

// Stat returns the info of an active or committed snapshot by name or key.
func (s *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil {
		return snapshots.Info{}, err
	}
	return info, nil
}

// Update updates the labels of a snapshot (the only mutable field).
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (_ snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		info, err = storage.UpdateInfo(ctx, info, fieldpaths...)
		return err
	})
	if err != nil {
		return snapshots.Info{}, err
	}
	return info, nil
}

// Usage returns the space a snapshot's own images take on disk. Committed
// snapshots report what was recorded at commit.
func (s *Snapshotter) Usage(ctx context.Context, key string) (usage snapshots.Usage, err error) {
	var (
		id   string
		info snapshots.Info
	)
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil {
		return snapshots.Usage{}, err
	}
	if info.Kind == snapshots.KindCommitted {
		return usage, nil
	}
	return s.diskUsage(s.dir(id), LayerImage, WritableImage)
}

// diskUsage sums the allocated bytes of the named files in dir (sparse
// images count what they hold, not their apparent size). Inodes come from
// the conversion stats when a layer was applied.
func (s *Snapshotter) diskUsage(dir string, names ...string) (snapshots.Usage, error) {
	u := snapshots.Usage{Inodes: 1}
	for _, n := range names {
		size, err := allocated(filepath.Join(dir, n))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return snapshots.Usage{}, err
		}
		u.Size += size
	}
	if li, err := ReadLayerInfo(dir); err == nil && li.Entries > 0 {
		u.Inodes = int64(li.Entries)
	}
	return u, nil
}

// Walk calls fn for each snapshot matching the filters.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, fs ...string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, fs...)
	})
}

// Close closes the metadata store.
func (s *Snapshotter) Close() error {
	return s.ms.Close()
}

// writableSize returns the size of the writable image of a snapshot.
func (s *Snapshotter) writableSize(info snapshots.Info) (int64, error) {
	v, ok := info.Labels[LabelWritableSize]
	if !ok {
		return s.cfg.WritableSize, nil
	}
	n, err := ParseSize(v)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("label %s=%q: want a positive size: %w", LabelWritableSize, v, errdefs.ErrInvalidArgument)
	}
	return n, nil
}

// removeTemps removes the temporary files of images that were being written
// when a previous run stopped; nothing is in flight before New returns.
func removeTemps(root string) {
	for _, pattern := range []string{
		filepath.Join(SnapshotsDir(root), "*", "*"+tmpSuffix),
		filepath.Join(root, mergedDir, "*"+tmpSuffix),
	} {
		matches, _ := filepath.Glob(pattern)
		for _, m := range matches {
			os.Remove(m)
		}
	}
}
