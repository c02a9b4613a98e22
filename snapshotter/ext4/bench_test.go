package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkConvertLayer converts a 100 MiB single-file layer, plain and
// gzip-compressed (through Decompress).
func BenchmarkConvertLayer(b *testing.B) {
	const size = 100 << 20
	var plain bytes.Buffer
	tw := tar.NewWriter(&plain)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: size, ModTime: epoch})
	io.Copy(tw, io.LimitReader(patternReader{}, size))
	tw.Close()
	for _, bc := range []struct {
		name string
		data []byte
	}{
		{"plain", plain.Bytes()},
		{"gzip", gzipped(b, plain.Bytes())},
		{"zstd", zstded(b, plain.Bytes())},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(plain.Len()))
			dir := b.TempDir()
			for i := 0; b.Loop(); i++ {
				rc, err := Decompress(bytes.NewReader(bc.data))
				if err != nil {
					b.Fatal(err)
				}
				img := filepath.Join(dir, "img")
				if _, err := ConvertLayer(context.Background(), rc, img, DefaultLimits()); err != nil {
					b.Fatal(err)
				}
				rc.Close()
				os.Remove(img)
			}
		})
	}
}
