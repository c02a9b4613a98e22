package diskstamp

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	b, err := Encode("c1-layer0")
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != Size {
		t.Fatalf("stamp of %d bytes, want %d", len(b), Size)
	}
	if id, ok := Parse(b); !ok || id != "c1-layer0" {
		t.Errorf("Parse = %q %v", id, ok)
	}
	if err := Check(b); err != nil {
		t.Errorf("Check of a stamp: %v", err)
	}
}

func TestEncodeRejects(t *testing.T) {
	for _, id := range []string{"", "with space", "new\nline", "123456789012345678901", "ümlaut"} {
		if _, err := Encode(id); err == nil {
			t.Errorf("Encode(%q) succeeded", id)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for name, head := range map[string][]byte{
		"zeros":      make([]byte, Size),
		"no newline": []byte(magic + "abc"),
		"empty id":   []byte(magic + "\n"),
		"too long":   []byte(magic + "123456789012345678901\n"),
		"other data": append([]byte("\xeb\x3c\x90mkfs.fat"), make([]byte, Size)...),
	} {
		if id, ok := Parse(head); ok {
			t.Errorf("%s: parsed %q", name, id)
		}
	}
}

func TestCheck(t *testing.T) {
	if err := Check(make([]byte, Size)); err != nil {
		t.Errorf("zeros: %v", err)
	}
	used := make([]byte, Size)
	used[1023] = 1
	if err := Check(used); !errors.Is(err, ErrInUse) {
		t.Errorf("used boot block: %v, want ErrInUse", err)
	}
	if err := Check(bytes.Repeat([]byte{0}, 512)); err == nil {
		t.Errorf("short disk accepted")
	}
}

func TestHead(t *testing.T) {
	dir := t.TempDir()
	stamp, _ := Encode("d1")
	full, short := filepath.Join(dir, "full"), filepath.Join(dir, "short")
	os.WriteFile(full, append(stamp, make([]byte, 4096)...), 0o644)
	os.WriteFile(short, make([]byte, 100), 0o644)
	if h, err := Head(full); err != nil || len(h) != Size || !bytes.Equal(h, stamp) {
		t.Errorf("Head = %d bytes, %v", len(h), err)
	}
	if _, err := Head(short); err == nil {
		t.Error("a disk shorter than a KiB was read")
	}
	if _, err := Head(filepath.Join(dir, "gone")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing disk: %v", err)
	}
}
