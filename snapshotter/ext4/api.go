// Package ext4 turns OCI layer tars into read-only ext4 images and makes
// the sparse writable ext4 images that active snapshots use. Nothing here
// mounts anything or extracts a tar onto the host filesystem.
package ext4

import (
	"context"
	"io"
)

// Limits bound what a layer may make the snapshotter write.
type Limits struct {
	MaxImageSize int64 // largest ext4 image written (default 64 GiB; tar2ext4.MaximumDiskSize)
	MaxFileSize  int64 // largest single regular file (default 32 GiB)
	MaxEntries   int   // most tar entries in one layer (default 1<<22)
}

// orDefaults fills the zero fields of l from DefaultLimits.
func (l Limits) orDefaults() Limits {
	d := DefaultLimits()
	if l.MaxImageSize <= 0 {
		l.MaxImageSize = d.MaxImageSize
	}
	if l.MaxFileSize <= 0 {
		l.MaxFileSize = d.MaxFileSize
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = d.MaxEntries
	}
	return l
}

// DefaultLimits returns the limits used when the caller has no better idea.
func DefaultLimits() Limits {
	return Limits{
		MaxImageSize: 64 << 30,
		MaxFileSize:  32 << 30,
		MaxEntries:   1 << 22,
	}
}

// Stats describe a written image.
type Stats struct {
	Entries   int   // tar entries read (merged: entries written)
	TarBytes  int64 // uncompressed tar bytes read
	ImageSize int64 // apparent size of the ext4 image
}

// ConvertLayer reads an uncompressed OCI layer tar from r and writes a
// read-only ext4 image at dst, which must not exist. Whiteouts are converted
// to overlayfs form (char 0/0 devices; opaque dirs get
// trusted.overlay.opaque=y). On any error dst is removed and the error says
// which entry was at fault, wrapping errdefs.ErrInvalidArgument for hostile
// or malformed input. The image passes `e2fsck -fn`.
//
// Names are taken relative to the root: a leading "/" and "." components are
// dropped as containerd's archive does, but a ".." climbing above the root is
// rejected, as are entries below a symlink or file of the same layer,
// hardlinks to anything but an earlier non-directory entry, duplicate
// non-directory entries, trusted.overlay.* xattrs (dropped) and a stream
// without an end-of-archive marker. A whiteout of a path the layer itself
// recreates is dropped, or becomes an opaque marker if that path is a
// directory. Zero fields of lim take their DefaultLimits value; an existing
// dst fails with errdefs.ErrAlreadyExists and is left alone.
func ConvertLayer(ctx context.Context, r io.Reader, dst string, lim Limits) (Stats, error) {
	return convertLayer(ctx, r, dst, lim.orDefaults())
}

// Merge writes one read-only ext4 image at dst holding the layers applied in
// order (layers[0] is the bottom); whiteouts and opaque directories of upper
// layers are applied, not carried. Each opener returns an uncompressed tar
// stream.
//
// The result is the view overlayfs shows stacking the layers' own images (so
// an upper directory hides a lower symlink of the same name rather than
// being written through it), meant as the bottom of a stack: it holds no
// whiteouts. Each layer must pass the checks of ConvertLayer. Layers are read
// once for their headers, which are held in memory, and those that still hold
// data of surviving files once more to copy it. A hardlinked file stays one
// inode under the names that survive; removing or replacing its original
// name does not break the others. Stats.TarBytes counts all reads.
func Merge(ctx context.Context, layers []func() (io.ReadCloser, error), dst string, lim Limits) (Stats, error) {
	return merge(ctx, layers, dst, lim.orDefaults())
}

// CreateWritable creates a sparse, empty, writable ext4 image of size bytes
// at path (continuity's pkg/ext4.Create); it passes e2fsck -fn.
// The file must not exist (errdefs.ErrAlreadyExists) and size must be at
// least 64 MiB (errdefs.ErrInvalidArgument).
func CreateWritable(path string, size int64) error {
	return createWritable(path, size)
}
