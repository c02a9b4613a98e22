package ext4

import (
	"errors"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
)

// entryError reports a layer entry that cannot be converted. The entry's
// ordinal and name are part of the message so a bad layer can be found.
func entryError(idx int, name string, format string, args ...any) error {
	return fmt.Errorf("entry %d %q: %s: %w", idx, name, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// sourceReader remembers the errors of the reader it wraps, so that a
// decoder's own error (corrupt or truncated input) can be told apart from a
// failure to read the blob (which is not the layer's fault).
type sourceReader struct {
	r   io.Reader
	n   int64
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// classify returns err unchanged when it came from the wrapped reader and
// otherwise marks it as malformed input, prefixed with what.
func (s *sourceReader) classify(err error, what string) error {
	if err == nil {
		return nil
	}
	if s.err != nil && errors.Is(err, s.err) {
		return err
	}
	if errors.Is(err, errdefs.ErrInvalidArgument) {
		return err
	}
	return fmt.Errorf("%s: %w: %w", what, err, errdefs.ErrInvalidArgument)
}

// errNoTrailer is returned for a tar stream that ends without the
// end-of-archive marker: Go's tar reader accepts that, but it is what a
// stream cut at an entry boundary looks like.
var errNoTrailer = fmt.Errorf("tar archive truncated: no end-of-archive marker: %w", errdefs.ErrInvalidArgument)

// hasTrailer reports whether at least one 512-byte block was read after the
// last entry's data, which ended at offset dataEnd. The tar reader only
// returns io.EOF after such a block if the block was all zeros.
func hasTrailer(read, dataEnd int64) bool {
	return read >= (dataEnd+511)&^511+512
}
