package ext4

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
)

// maxTrailer bounds what is read after the end-of-archive marker: it is
// drained so a compressed stream's checksum gets verified, but a hostile
// blob must not keep us reading forever. tar writers pad to 10 KiB records.
const maxTrailer = 1 << 20

func convertLayer(ctx context.Context, r io.Reader, dst string, lim Limits) (Stats, error) {
	var st Stats
	src := &sourceReader{r: r}
	size, err := writeImage(ctx, dst, lim, func(w io.Writer, last *string) error {
		n, err := filterLayer(ctx, src, w, lim, last)
		st.Entries = n
		return err
	})
	st.TarBytes = src.n
	st.ImageSize = size
	return st, err
}

// filterLayer copies the layer tar read from src to w, validated and
// sanitized. Whiteouts are held back to the end: only then is it known
// whether the layer itself recreates the path (see pendingWhiteouts).
func filterLayer(ctx context.Context, src *sourceReader, w io.Writer, lim Limits, last *string) (int, error) {
	v := newValidator(lim)
	tr := tar.NewReader(src)
	tw := tar.NewWriter(w)
	var wh pendingWhiteouts
	var dataEnd int64
	idx := 0
	for ; ; idx++ {
		if err := ctx.Err(); err != nil {
			return idx, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			if !hasTrailer(src.n, dataEnd) {
				return idx, errNoTrailer
			}
			break
		}
		if err != nil {
			return idx, src.classify(err, fmt.Sprintf("reading tar entry %d", idx))
		}
		ev, err := v.check(idx, hdr)
		if err != nil {
			return idx, err
		}
		var data io.Writer = io.Discard // whatever an entry carries is read, to know where it ends
		switch ev.kind {
		case evWhiteout:
			wh.whiteout(ev.path)
		case evOpaque:
			wh.opaque(ev.path)
		case evEntry:
			*last = hdr.Name
			if err := tw.WriteHeader(ev.hdr); err != nil {
				return idx, entryError(idx, hdr.Name, "%v", err)
			}
			if ev.hdr.Size > 0 {
				data = tw
			}
		}
		if _, err := io.Copy(data, ctxReader{ctx, tr}); err != nil {
			if errors.Is(err, errConverterDone) || ctx.Err() != nil {
				return idx, err
			}
			return idx, fmt.Errorf("entry %d %q: %w", idx, hdr.Name, src.classify(err, "reading file data"))
		}
		dataEnd = src.n
	}
	if err := drainTrailer(src); err != nil {
		return idx, err
	}
	if err := wh.write(tw, v, last); err != nil {
		return idx, err
	}
	return idx, tw.Close()
}

// drainTrailer reads what follows the end-of-archive marker, so that a
// compressed stream's checksum is verified, but no more than maxTrailer.
func drainTrailer(src *sourceReader) error {
	n, err := io.CopyN(io.Discard, src, maxTrailer+1)
	if err != nil && err != io.EOF {
		return src.classify(err, "reading after the end of the tar archive")
	}
	if n > maxTrailer {
		return fmt.Errorf("more than %d bytes after the end of the tar archive: %w", maxTrailer, errdefs.ErrInvalidArgument)
	}
	return nil
}

// pendingWhiteouts collects a layer's whiteouts and opaque markers. OCI
// whiteouts only hide what lies below, but in an overlayfs lower layer a path
// is either a whiteout or an entry, so: a whiteout of a path the layer also
// has as a file is dropped (the file hides the lower one anyway); one of a
// path the layer has as a directory becomes an opaque marker on it.
type pendingWhiteouts struct {
	whiteouts []string
	opaques   []string
}

func (p *pendingWhiteouts) whiteout(path string) { p.whiteouts = append(p.whiteouts, path) }
func (p *pendingWhiteouts) opaque(dir string)    { p.opaques = append(p.opaques, dir) }

func (p *pendingWhiteouts) write(tw *tar.Writer, v *validator, last *string) error {
	seen := make(map[string]bool)
	emit := func(name string) error {
		if seen[name] {
			return nil
		}
		seen[name] = true
		*last = name
		// tar2ext4 makes a 0/0 char device of ".wh.x" and sets
		// trusted.overlay.opaque=y for ".wh..wh..opq".
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o600, Format: tar.FormatPAX})
	}
	for _, d := range p.opaques {
		if err := emit(joinPath(d, opaqueWhiteout)); err != nil {
			return err
		}
	}
	for _, t := range p.whiteouts {
		switch {
		case v.isDir(t):
			if err := emit(joinPath(t, opaqueWhiteout)); err != nil {
				return err
			}
		case v.exists(t):
		default:
			dir, base := splitPath(t)
			if err := emit(joinPath(dir, whiteoutPrefix+base)); err != nil {
				return err
			}
		}
	}
	return nil
}
