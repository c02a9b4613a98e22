package guest

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"os"
	"testing"
)

// The vector was made with Python's lzma module (xz --x86 --lzma2).
func TestUnxzKernelBCJ(t *testing.T) {
	x, err := os.ReadFile("testdata/bcj-x86.xz")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/bcj-x86.bin")
	if err != nil {
		t.Fatal(err)
	}
	got, err := unxzKernel(x)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("decoded %d bytes that differ from the %d expected", len(got), len(want))
	}
}

// fakeBzImage wraps payload the way the x86 boot protocol lays it out.
func fakeBzImage(payload []byte) []byte {
	const setupSects = 4
	img := make([]byte, (setupSects+1)*512)
	img[0x1f1] = setupSects
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint32(img[0x248:], 64) // payload offset
	binary.LittleEndian.PutUint32(img[0x24c:], uint32(len(payload)))
	img = append(img, make([]byte, 64)...)
	return append(img, payload...)
}

// elfWithNote is a minimal ELF64 with one PT_NOTE segment.
func elfWithNote(name string, typ uint32) []byte {
	var note bytes.Buffer
	binary.Write(&note, binary.LittleEndian, uint32(len(name)+1))
	binary.Write(&note, binary.LittleEndian, uint32(4))
	binary.Write(&note, binary.LittleEndian, typ)
	note.WriteString(name + "\x00")
	for note.Len()%4 != 0 {
		note.WriteByte(0)
	}
	note.Write([]byte{1, 0, 0, 0})

	var b bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: 1,
		Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: 1,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	binary.Write(&b, binary.LittleEndian, hdr)
	binary.Write(&b, binary.LittleEndian, elf.Prog64{Type: uint32(elf.PT_NOTE), Off: 120, Filesz: uint64(note.Len()), Memsz: uint64(note.Len())})
	b.Write(note.Bytes())
	return b.Bytes()
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func TestVmlinux(t *testing.T) {
	pvh := elfWithNote("Xen", 18)
	out, ok, err := vmlinux(fakeBzImage(gz(pvh)))
	if err != nil || !ok || !bytes.Equal(out, pvh) {
		t.Errorf("PVH kernel: ok=%v err=%v, %d bytes", ok, err, len(out))
	}
	// An ELF without the PVH entry cannot be booted directly.
	if _, ok, err := vmlinux(fakeBzImage(gz(elfWithNote("Linux", 1)))); ok || err != nil {
		t.Errorf("no PVH note: ok=%v err=%v", ok, err)
	}
	// An unknown compression keeps the bzImage.
	if _, ok, err := vmlinux(fakeBzImage([]byte("BZh91AY&SY"))); ok || err != nil {
		t.Errorf("bzip2 payload: ok=%v err=%v", ok, err)
	}
	if _, _, err := vmlinux(fakeBzImage(gz([]byte("not an elf")))); err == nil {
		t.Errorf("a payload that is not ELF was accepted")
	}
}
