// Package differ applies OCI layer blobs to the vz snapshotter's snapshots
// by converting each layer tar into a read-only ext4 image
// (root/snapshots/<id>/layer.ext4). It reads blobs from containerd's content
// store and never mounts anything, so it works unprivileged and on macOS.
package differ

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vz-shim/containerd-shim-vz/snapshotter"
	"github.com/vz-shim/containerd-shim-vz/snapshotter/ext4"
)

// Differ is the vz differ: a diff.Applier for the vz snapshotter's
// snapshots, and a diff.Comparer that declines.
type Differ struct {
	root   string
	store  content.Provider
	limits ext4.Limits
}

var (
	_ diff.Applier  = (*Differ)(nil)
	_ diff.Comparer = (*Differ)(nil)
)

// New returns a differ for the snapshotter rooted at root, reading blobs
// from store.
func New(root string, store content.Provider, limits ext4.Limits) *Differ {
	if limits == (ext4.Limits{}) {
		limits = ext4.DefaultLimits()
	}
	if abs, err := filepath.Abs(root); err == nil {
		root = abs
	}
	return &Differ{root: root, store: store, limits: limits}
}

// layerTypes are the media types of layers Apply accepts; the compression
// itself is detected from the bytes by ext4.Decompress.
var layerTypes = map[string]bool{
	ocispec.MediaTypeImageLayer:                                    true,
	ocispec.MediaTypeImageLayerGzip:                                true,
	ocispec.MediaTypeImageLayerZstd:                                true,
	"application/vnd.oci.image.layer.nondistributable.v1.tar":      true,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": true,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": true,
	images.MediaTypeDockerSchema2Layer:                             true,
	images.MediaTypeDockerSchema2LayerGzip:                         true,
	images.MediaTypeDockerSchema2LayerZstd:                         true,
	images.MediaTypeDockerSchema2LayerForeign:                      true,
	images.MediaTypeDockerSchema2LayerForeignGzip:                  true,
}

// Apply converts the layer blob desc into the layer image of the active
// snapshot whose mounts are given. Mounts that are not the vz snapshotter's
// get an error wrapping errdefs.ErrNotImplemented, so that containerd tries
// its next differ. On any error nothing is left behind: the snapshot has no
// layer.ext4 and cannot be committed.
func (d *Differ) Apply(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount, opts ...diff.ApplyOpt) (_ ocispec.Descriptor, retErr error) {
	dir, err := snapshotter.SnapshotDirFromMounts(d.root, mounts)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	var cfg diff.ApplyConfig
	for _, o := range opts {
		if err := o(ctx, desc, &cfg); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	if !layerTypes[desc.MediaType] {
		return ocispec.Descriptor{}, fmt.Errorf("vz differ cannot apply media type %q: %w", desc.MediaType, errdefs.ErrInvalidArgument)
	}
	alg := desc.Digest.Algorithm()
	if err := desc.Digest.Validate(); err != nil || !alg.Available() {
		return ocispec.Descriptor{}, fmt.Errorf("layer digest %q: %w", desc.Digest, errdefs.ErrInvalidArgument)
	}
	if _, err := os.Stat(dir); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("snapshot directory %s: %w", dir, errdefs.ErrNotFound)
	}
	final := filepath.Join(dir, snapshotter.LayerImage)
	if _, err := os.Stat(final); err == nil {
		return ocispec.Descriptor{}, fmt.Errorf("a layer was already applied to %s: %w", dir, errdefs.ErrAlreadyExists)
	}

	// The request's namespace arrives as incoming gRPC metadata; outgoing
	// calls to containerd carry it only if set again.
	ns, _ := namespaces.Namespace(ctx)
	cctx := ctx
	if ns != "" {
		cctx = namespaces.WithNamespace(ctx, ns)
	}
	ra, err := d.store.ReaderAt(cctx, desc)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("failed to open layer blob %s: %w", desc.Digest, err)
	}
	defer ra.Close()

	tmp := final + ".tmp"
	defer func() {
		if retErr != nil {
			if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
				log.G(ctx).WithError(err).WithField("path", tmp).Warn("failed to remove partial layer image")
			}
		}
	}()

	compressed := &digestCounter{d: desc.Digest.Algorithm().Digester()}
	// Every ReadAt of containerd's content proxy is a gRPC stream of its
	// own: read the blob in large pieces.
	raw := io.TeeReader(bufio.NewReaderSize(content.NewReader(ra), blobReadSize), compressed)
	rc, err := ext4.Decompress(raw)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("failed to decompress layer blob %s: %w", desc.Digest, err)
	}
	defer rc.Close()
	uncompressed := &digestCounter{d: digest.Canonical.Digester()}
	tarStream := io.TeeReader(rc, uncompressed)

	stats, err := ext4.ConvertLayer(ctx, tarStream, tmp, d.limits)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("failed to convert layer %s: %w", desc.Digest, err)
	}
	// The tar reader stops at the end-of-archive marker; the digests cover
	// every byte, padding included.
	if _, err := io.Copy(io.Discard, tarStream); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("failed to read layer blob %s: %w", desc.Digest, err)
	}
	if _, err := io.Copy(io.Discard, raw); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("failed to read layer blob %s: %w", desc.Digest, err)
	}
	if got := compressed.d.Digest(); got != desc.Digest || (desc.Size > 0 && compressed.n != desc.Size) {
		return ocispec.Descriptor{}, fmt.Errorf("layer blob %s is corrupt: read %d bytes with digest %s, want %d bytes: %w",
			desc.Digest, compressed.n, got, desc.Size, errdefs.ErrFailedPrecondition)
	}

	if err := snapshotter.SyncPath(tmp); err != nil {
		return ocispec.Descriptor{}, err
	}
	diffID := uncompressed.d.Digest()
	// layer.json first: layer.ext4 is what marks the snapshot as applied.
	if err := snapshotter.WriteLayerInfo(dir, snapshotter.LayerInfo{
		Blob:      desc,
		DiffID:    diffID.String(),
		Namespace: ns,
		Entries:   stats.Entries,
		TarBytes:  stats.TarBytes,
		ImageSize: stats.ImageSize,
	}); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("failed to record layer %s: %w", desc.Digest, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := snapshotter.SyncPath(dir); err != nil {
		log.G(ctx).WithError(err).WithField("dir", dir).Warn("failed to sync snapshot directory")
	}
	log.G(ctx).WithField("blob", desc.Digest).WithField("diffID", diffID).WithField("entries", stats.Entries).Debug("layer applied")
	return ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageLayer,
		Digest:    diffID,
		Size:      uncompressed.n,
	}, nil
}

// Compare is not supported: making a layer from a snapshot would mean
// reading a writable ext4 image on the host, which needs mounting it.
func (d *Differ) Compare(ctx context.Context, lower, upper []mount.Mount, opts ...diff.Opt) (ocispec.Descriptor, error) {
	return ocispec.Descriptor{}, fmt.Errorf("vz differ cannot compute diffs (the host does not mount ext4 images): %w", errdefs.ErrNotImplemented)
}

// blobReadSize is how much of a layer blob one read from containerd's
// content store asks for.
const blobReadSize = 1 << 20

type digestCounter struct {
	d digest.Digester
	n int64
}

func (c *digestCounter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.d.Hash().Write(p)
}
