package snapshotter

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Names of the files inside root/snapshots/<id>/. The differ writes the
// first two, the snapshotter the third.
const (
	LayerImage    = "layer.ext4" // committed layer image, read-only
	LayerInfoFile = "layer.json" // what the differ applied (see LayerInfo)
	WritableImage = "rw.ext4"    // writable image of an active snapshot

	snapshotsDir = "snapshots"
	mergedDir    = "merged"
	tmpSuffix    = ".tmp"
)

// LayerInfo records the layer blob the differ turned into a snapshot's
// layer.ext4. Merging reads the blob again from containerd's content store,
// so the descriptor and the namespace it lived in are kept.
type LayerInfo struct {
	Blob      ocispec.Descriptor `json:"blob"`
	DiffID    string             `json:"diffID"`
	Namespace string             `json:"namespace,omitempty"`
	Entries   int                `json:"entries"`
	TarBytes  int64              `json:"tarBytes"`
	ImageSize int64              `json:"imageSize"`
}

// SnapshotsDir is where a snapshotter rooted at root keeps its snapshot
// directories.
func SnapshotsDir(root string) string {
	return filepath.Join(root, snapshotsDir)
}

// ReadLayerInfo reads the layer.json of the snapshot directory dir.
func ReadLayerInfo(dir string) (LayerInfo, error) {
	var li LayerInfo
	b, err := os.ReadFile(filepath.Join(dir, LayerInfoFile))
	if err != nil {
		if os.IsNotExist(err) {
			return li, fmt.Errorf("no layer applied in %s: %w", dir, errdefs.ErrNotFound)
		}
		return li, err
	}
	if err := json.Unmarshal(b, &li); err != nil {
		return li, fmt.Errorf("corrupt %s in %s: %w", LayerInfoFile, dir, err)
	}
	return li, nil
}

// WriteLayerInfo writes layer.json into dir atomically (temp file, fsync,
// rename) so that a crash never leaves a half-written record.
func WriteLayerInfo(dir string, li LayerInfo) error {
	b, err := json.Marshal(li)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, LayerInfoFile), b)
}

func writeFileAtomic(path string, b []byte) (err error) {
	tmp := path + tmpSuffix
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// SnapshotDirFromMounts returns the directory of the active snapshot whose
// mounts are given, if they are the mounts this snapshotter (rooted at root)
// hands out for an active snapshot: the first mount is the writable image
// root/snapshots/<id>/rw.ext4. Anything else wraps errdefs.ErrNotImplemented,
// so that containerd's diff service tries its next differ.
func SnapshotDirFromMounts(root string, mounts []mount.Mount) (string, error) {
	if len(mounts) == 0 {
		return "", fmt.Errorf("no mounts: %w", errdefs.ErrNotImplemented)
	}
	m := mounts[0]
	if m.Type != "ext4" || filepath.Base(m.Source) != WritableImage {
		return "", fmt.Errorf("mount %s %s is not a vz writable image: %w", m.Type, m.Source, errdefs.ErrNotImplemented)
	}
	dir := filepath.Dir(filepath.Clean(m.Source))
	if filepath.Dir(dir) != filepath.Clean(SnapshotsDir(root)) || !isID(filepath.Base(dir)) {
		return "", fmt.Errorf("mount source %s is not under %s: %w", m.Source, SnapshotsDir(root), errdefs.ErrNotImplemented)
	}
	rw := false
	for _, o := range m.Options {
		switch o {
		case "rw":
			rw = true
		case "ro":
			return "", fmt.Errorf("mount %s is read-only: %w", m.Source, errdefs.ErrNotImplemented)
		}
	}
	if !rw {
		return "", fmt.Errorf("mount %s is not writable: %w", m.Source, errdefs.ErrNotImplemented)
	}
	return dir, nil
}

// isID reports whether name looks like a metastore id (decimal digits).
func isID(name string) bool {
	return name != "" && strings.Trim(name, "0123456789") == ""
}

// SyncPath flushes a file or a directory to disk. A read-only descriptor
// suffices for fsync, and is all a directory can be opened with.
func SyncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
