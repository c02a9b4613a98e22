package ext4

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"
	"github.com/containerd/errdefs"
)

// errConverterDone unblocks a tar producer once the converter stopped reading.
var errConverterDone = errors.New("ext4 converter stopped reading")

// producer writes a sanitized tar stream to w and reports the name of the
// entry it was writing last through last, for error messages.
type producer func(w io.Writer, last *string) error

// writeImage creates dst exclusively, feeds the tar stream of produce through
// tar2ext4 into it, makes the result fsck-clean and syncs it. On any failure,
// including ctx cancellation, dst is removed.
func writeImage(ctx context.Context, dst string, lim Limits, produce producer) (size int64, retErr error) {
	f, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return 0, fmt.Errorf("ext4 image %s: %w", dst, errdefs.ErrAlreadyExists)
		}
		return 0, fmt.Errorf("creating ext4 image: %w", err)
	}
	defer func() {
		if retErr != nil {
			f.Close()
			os.Remove(dst)
		}
	}()

	pr, pw := io.Pipe()
	var last string
	done := make(chan error, 1)
	go func() {
		err := produce(pw, &last)
		pw.CloseWithError(err) // nil means EOF
		done <- err
	}()
	rec := &sparseFile{f: f}
	convErr := runTar2ext4(pr, rec, lim)
	pr.CloseWithError(errConverterDone)
	prodErr := <-done

	switch {
	case prodErr != nil && !errors.Is(prodErr, errConverterDone):
		return 0, prodErr // the converter only saw the pipe fail
	case convErr == nil && prodErr != nil:
		return 0, fmt.Errorf("ext4 converter stopped before entry %q: %w", last, errdefs.ErrInvalidArgument)
	case convErr == nil:
	case rec.err != nil && errors.Is(convErr, rec.err):
		return 0, fmt.Errorf("writing ext4 image: %w", convErr)
	case errors.Is(convErr, errdefs.ErrInternal):
		return 0, fmt.Errorf("converting entry %q to ext4: %w", last, convErr)
	default:
		// The stream was valid tar, so tar2ext4 refused its content
		// (too large, an xattr that does not fit, too many links, …).
		return 0, fmt.Errorf("converting entry %q to ext4: %w: %w", last, convErr, errdefs.ErrInvalidArgument)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := setInodeBitmapPadding(f); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("syncing ext4 image: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("closing ext4 image: %w", err)
	}
	return fi.Size(), nil
}

// runTar2ext4 runs tar2ext4. compactext4 panics on a few states it considers
// impossible; a layer that reaches one must fail, not take the snapshotter
// down.
func runTar2ext4(r io.Reader, w io.ReadWriteSeeker, lim Limits) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("tar2ext4 panicked: %v: %w", p, errdefs.ErrInternal)
		}
	}()
	return tar2ext4.Convert(r, w, tar2ext4.ConvertWhiteout, tar2ext4.MaximumDiskSize(lim.MaxImageSize))
}

// ctxReader fails reads once ctx is done, so a long file copy stops on
// cancellation.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
