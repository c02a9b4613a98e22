package ext4

import (
	"bytes"
	"errors"
	"io"
	"os"
)

// sparseFile is the image file as tar2ext4 sees it. Blocks of zeros written
// past the end of the file become holes: tar2ext4 writes the unused tail of
// the last block group and all-zero file data as real zeros, which would
// cost up to 128 MiB of disk for a layer with many small files. It also
// remembers I/O errors so they are not blamed on the layer.
type sparseFile struct {
	f    *os.File
	pos  int64
	size int64
	err  error
}

var zeroChunk = make([]byte, 64<<10)

func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroChunk))
		if !bytes.Equal(p[:n], zeroChunk[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

func (s *sparseFile) record(err error) error {
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return err
}

func (s *sparseFile) Read(p []byte) (int, error) {
	n, err := s.f.ReadAt(p, s.pos)
	s.pos += int64(n)
	return n, s.record(err)
}

func (s *sparseFile) Write(p []byte) (int, error) {
	end := s.pos + int64(len(p))
	if s.pos >= s.size && isZero(p) {
		if err := s.f.Truncate(end); err != nil {
			return 0, s.record(err)
		}
	} else if n, err := s.f.WriteAt(p, s.pos); err != nil {
		s.pos += int64(n)
		s.size = max(s.size, s.pos)
		return n, s.record(err)
	}
	s.pos = end
	s.size = max(s.size, end)
	return len(p), nil
}

func (s *sparseFile) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += s.pos
	case io.SeekEnd:
		off += s.size
	default:
		return 0, s.record(errors.New("sparseFile: bad whence"))
	}
	if off < 0 {
		return 0, s.record(errors.New("sparseFile: negative position"))
	}
	s.pos = off
	return off, nil
}
