package ext4

import (
	"bytes"
	"io"
	"testing"
)

func TestDecompress(t *testing.T) {
	plain := buildTar(t, file("a", 0o644, "hello"))
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"plain", plain},
		{"gzip", gzipped(t, plain)},
		{"zstd", zstded(t, plain)},
		{"empty", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc, err := Decompress(bytes.NewReader(tc.data))
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil {
				t.Fatal(err)
			}
			want := plain
			if tc.data == nil {
				want = nil
			}
			if !bytes.Equal(got, want) {
				t.Errorf("got %d bytes, want %d", len(got), len(want))
			}
		})
	}
}

// A failing blob reader is not the layer's fault.
func TestDecompressSourceError(t *testing.T) {
	gz := gzipped(t, buildTar(t, file("a", 0o644, "hello")))
	rc, err := Decompress(io.MultiReader(bytes.NewReader(gz[:20]), errReader{}))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	_, err = io.ReadAll(rc)
	if err == nil || err.Error() != errBroken.Error() {
		t.Fatalf("err = %v, want %v unchanged", err, errBroken)
	}
}

var errBroken = io.ErrClosedPipe

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errBroken }
