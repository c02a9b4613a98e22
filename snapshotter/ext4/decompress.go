package ext4

import (
	"bufio"
	"bytes"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

var (
	gzipMagic = []byte{0x1f, 0x8b, 0x08}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// zstdMaxWindow bounds the memory a hostile zstd frame header can make the
// decoder allocate; the zstd CLI decodes up to 128 MiB windows by default.
const zstdMaxWindow = 128 << 20

// decompressed is the ReadCloser Decompress returns: decoder errors are
// marked as malformed input, errors of the blob reader pass through.
type decompressed struct {
	r     io.Reader
	src   *sourceReader
	what  string
	close func()
}

func (d *decompressed) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err != nil && err != io.EOF {
		err = d.src.classify(err, d.what)
	}
	return n, err
}

func (d *decompressed) Close() error {
	if d.close != nil {
		d.close()
		d.close = nil
	}
	return nil
}

// Decompress returns the uncompressed stream of a layer blob: gzip, zstd or
// plain tar, detected by magic bytes. Corrupt or truncated compressed data is
// reported as an error wrapping errdefs.ErrInvalidArgument. Close releases the
// decoder; it does not close r.
func Decompress(r io.Reader) (io.ReadCloser, error) {
	src := &sourceReader{r: r}
	br := bufio.NewReaderSize(src, 64<<10)
	magic, err := br.Peek(len(zstdMagic))
	if err != nil && err != io.EOF {
		return nil, src.classify(err, "reading layer")
	}
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		// Multistream: concatenated members are one stream, as gzip(1) has it.
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, src.classify(err, "corrupt gzip layer")
		}
		return &decompressed{r: zr, src: src, what: "corrupt gzip layer", close: func() { zr.Close() }}, nil
	case bytes.HasPrefix(magic, zstdMagic):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			return nil, fmt.Errorf("zstd decoder: %w", err)
		}
		return &decompressed{r: zr, src: src, what: "corrupt zstd layer", close: zr.Close}, nil
	default:
		return &decompressed{r: br, src: src, what: "reading layer"}, nil
	}
}
