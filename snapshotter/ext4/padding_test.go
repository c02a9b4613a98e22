package ext4

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"
)

// TestPaddingTar2ext4 shows the e2fsck failure the fix is for, then the fix.
func TestPaddingTar2ext4(t *testing.T) {
	img := filepath.Join(t.TempDir(), "raw.ext4")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	layer := buildTar(t, dir("etc/", 0o755), file("etc/a", 0o644, "a"), symlink("l", "etc/a"), whiteout("etc/.wh.b"))
	if err := tar2ext4.Convert(bytes.NewReader(layer), f, tar2ext4.ConvertWhiteout); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(requireTool(t, "e2fsck"), "-fn", img).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Padding at end of inode bitmap is not set") {
		t.Logf("tar2ext4 no longer needs the fix? e2fsck: %v\n%s", err, out)
	}
	if err := setInodeBitmapPadding(f); err != nil {
		t.Fatal(err)
	}
	fsck(t, img)
	// A second pass changes nothing.
	before, _ := os.ReadFile(img)
	if err := setInodeBitmapPadding(f); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(img); !bytes.Equal(before, after) {
		t.Error("second pass changed the image")
	}
}

// TestPadding64bit checks the 64-byte descriptor path on an mkfs.ext4 image
// (64bit, metadata_csum, uninit groups) whose padding was cleared.
func TestPadding64bit(t *testing.T) {
	mkfs := requireTool(t, "mkfs.ext4")
	img := filepath.Join(t.TempDir(), "mkfs.ext4")
	if out, err := exec.Command(mkfs, "-q", "-F", "-b", "4096", "-N", "2048", "-O", "64bit,metadata_csum,^resize_inode",
		img, "512M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	fsck(t, img)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	// Clear the padding of group 0, which is always initialized.
	sb := make([]byte, 1024)
	f.ReadAt(sb, 1024)
	le := binary.LittleEndian
	if le.Uint32(sb[0x60:])&incompat64bit == 0 || le.Uint16(sb[0xFE:]) < 64 {
		t.Skip("mkfs.ext4 did not make a 64bit image")
	}
	ipg := le.Uint32(sb[0x28:])
	gd := make([]byte, 64)
	f.ReadAt(gd, 4096)
	loc := int64(le.Uint32(gd[4:])) | int64(le.Uint32(gd[0x24:]))<<32
	bitmap := make([]byte, 4096)
	f.ReadAt(bitmap, loc*4096)
	for i := ipg / 8; i < 4096; i++ {
		bitmap[i] = 0
	}
	f.WriteAt(bitmap, loc*4096)
	if out, err := exec.Command(requireTool(t, "e2fsck"), "-fn", img).CombinedOutput(); err == nil {
		t.Fatalf("e2fsck accepted cleared padding:\n%s", out)
	}
	if err := setInodeBitmapPadding(f); err != nil {
		t.Fatal(err)
	}
	fsck(t, img)
}

func TestPaddingNotExt4(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "zero"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(1 << 20)
	if err := setInodeBitmapPadding(f); err == nil {
		t.Fatal("accepted a zero file")
	}
}

func TestSetBitsFrom(t *testing.T) {
	for _, tc := range []struct {
		n    uint64
		in   []byte
		want []byte
		ch   bool
	}{
		{n: 16, in: []byte{1, 2, 0, 0}, want: []byte{1, 2, 0xff, 0xff}, ch: true},
		{n: 12, in: []byte{0xff, 0x0f, 0}, want: []byte{0xff, 0xff, 0xff}, ch: true},
		{n: 3, in: []byte{0xff, 0xff}, want: []byte{0xff, 0xff}, ch: false},
		{n: 24, in: []byte{0, 0, 0}, want: []byte{0, 0, 0}, ch: false},
	} {
		b := bytes.Clone(tc.in)
		if ch := setBitsFrom(b, tc.n); ch != tc.ch || !bytes.Equal(b, tc.want) {
			t.Errorf("setBitsFrom(%x, %d) = %x, %v; want %x, %v", tc.in, tc.n, b, ch, tc.want, tc.ch)
		}
	}
}
