package ext4

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
)

// FuzzConvertLayer: whatever tar a registry serves, the converter writes an
// image that e2fsck accepts, or fails with an invalid-argument error and
// leaves no image; never a panic, and within the limits.
func FuzzConvertLayer(f *testing.F) {
	f.Add(buildTar(f, dir("etc/", 0o755), file("etc/passwd", 0o644, "root:x:0:0::/root:/bin/sh\n"), symlink("bin", "usr/bin")))
	f.Add(buildTar(f, dir("a/", 0o755), whiteout("a/.wh..wh..opq"), whiteout(".wh.gone"), hardlink("a/l", "etc/passwd")))
	f.Add(buildTar(f, file("../../escape", 0o644, "x")))
	f.Add(buildTar(f, symlink("s", "/etc"), file("s/shadow", 0o600, "x")))
	f.Add([]byte("not a tar at all"))
	lim := Limits{MaxImageSize: 64 << 20, MaxFileSize: 1 << 20, MaxEntries: 1000}
	checked := 0
	f.Fuzz(func(t *testing.T, data []byte) {
		img := filepath.Join(t.TempDir(), "layer.ext4")
		st, err := ConvertLayer(context.Background(), bytes.NewReader(data), img, lim)
		if err != nil {
			if _, serr := os.Stat(img); !errors.Is(serr, os.ErrNotExist) {
				t.Fatalf("failed (%v) and left %s", err, img)
			}
			if !errdefs.IsInvalidArgument(err) && !errdefs.IsResourceExhausted(err) {
				t.Fatalf("error not classified as bad input: %v", err)
			}
			return
		}
		if st.ImageSize > lim.MaxImageSize {
			t.Fatalf("image of %d bytes past the limit", st.ImageSize)
		}
		// e2fsck is slow: every image while the corpus is small.
		if checked < 200 {
			checked++
			fsck(t, img)
		}
	})
}
