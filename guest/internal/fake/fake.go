// Package fake makes small ELF files and Debian packages for the tests of
// the guest packages, so that they need no real kernel package.
package fake

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ELF returns a 64-bit little-endian ELF executable for machine with the
// given sections (in name order) and, if interp, a PT_INTERP program header
// as a dynamically linked program has.
func ELF(machine elf.Machine, sections map[string][]byte, interp bool) []byte {
	names := make([]string, 0, len(sections))
	for n := range sections {
		names = append(names, n)
	}
	sort.Strings(names)

	const ehdrSize, phdrSize, shdrSize = 64, 56, 64
	phnum := 0
	if interp {
		phnum = 1
	}
	// Layout: ELF header, program headers, section contents, .shstrtab,
	// section headers.
	var body bytes.Buffer
	dataOff := ehdrSize + phdrSize*phnum
	offsets := make([]int, len(names))
	for i, n := range names {
		offsets[i] = dataOff + body.Len()
		body.Write(sections[n])
	}
	shstrtab := []byte{0}
	nameIdx := make([]int, len(names))
	for i, n := range names {
		nameIdx[i] = len(shstrtab)
		shstrtab = append(append(shstrtab, n...), 0)
	}
	shstrNameIdx := len(shstrtab)
	shstrtab = append(append(shstrtab, ".shstrtab"...), 0)
	shstrOff := dataOff + body.Len()
	body.Write(shstrtab)
	for body.Len()%8 != 0 {
		body.WriteByte(0)
	}
	shoff := dataOff + body.Len()
	shnum := len(names) + 2 // null section, sections, .shstrtab

	le := binary.LittleEndian
	var out bytes.Buffer
	ident := [16]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)}
	out.Write(ident[:])
	binary.Write(&out, le, uint16(elf.ET_EXEC))
	binary.Write(&out, le, uint16(machine))
	binary.Write(&out, le, uint32(elf.EV_CURRENT))
	binary.Write(&out, le, uint64(0)) // entry
	if interp {
		binary.Write(&out, le, uint64(ehdrSize))
	} else {
		binary.Write(&out, le, uint64(0))
	}
	binary.Write(&out, le, uint64(shoff))
	binary.Write(&out, le, uint32(0)) // flags
	binary.Write(&out, le, uint16(ehdrSize))
	binary.Write(&out, le, uint16(phdrSize))
	binary.Write(&out, le, uint16(phnum))
	binary.Write(&out, le, uint16(shdrSize))
	binary.Write(&out, le, uint16(shnum))
	binary.Write(&out, le, uint16(shnum-1)) // shstrndx
	if interp {
		// The interpreter path is the first section's content, if any.
		binary.Write(&out, le, elf.Prog64{Type: uint32(elf.PT_INTERP), Off: uint64(dataOff), Filesz: 1, Memsz: 1, Align: 1})
	}
	out.Write(body.Bytes())
	binary.Write(&out, le, elf.Section64{})
	for i := range names {
		binary.Write(&out, le, elf.Section64{
			Name: uint32(nameIdx[i]), Type: uint32(elf.SHT_PROGBITS),
			Off: uint64(offsets[i]), Size: uint64(len(sections[names[i]])), Addralign: 1,
		})
	}
	binary.Write(&out, le, elf.Section64{
		Name: uint32(shstrNameIdx), Type: uint32(elf.SHT_STRTAB),
		Off: uint64(shstrOff), Size: uint64(len(shstrtab)), Addralign: 1,
	})
	return out.Bytes()
}

// Module returns a kernel module file: an ELF with a .modinfo section
// holding the key=value pairs, and a __ksymtab section if exports.
func Module(modinfo []string, exports bool) []byte {
	var mi bytes.Buffer
	for _, kv := range modinfo {
		mi.WriteString(kv)
		mi.WriteByte(0)
	}
	sections := map[string][]byte{".modinfo": mi.Bytes(), ".text": {0xc3}}
	if exports {
		sections["__ksymtab"] = make([]byte, 12)
	}
	return ELF(elf.EM_X86_64, sections, false)
}

// File is an entry of a package's data.tar. Entries with a trailing "/"
// are directories.
type File struct {
	Name string
	Data []byte
}

// Deb returns a .deb whose data.tar, compressed as ext says ("", ".gz",
// ".xz", ".zst"), holds files in order, named "./<name>" as dpkg-deb does.
func Deb(ext string, files []File) ([]byte, error) {
	var data bytes.Buffer
	tw := tar.NewWriter(&data)
	for _, f := range files {
		h := &tar.Header{Name: "./" + f.Name, Mode: 0o644, Size: int64(len(f.Data)), Typeflag: tar.TypeReg}
		if f.Name[len(f.Name)-1] == '/' {
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	compressed, err := Compress(ext, data.Bytes())
	if err != nil {
		return nil, err
	}
	var ar bytes.Buffer
	ar.WriteString("!<arch>\n")
	for _, m := range []struct {
		name string
		data []byte
	}{
		{"debian-binary", []byte("2.0\n")},
		{"control.tar.gz", mustGzip([]byte("not read"))}, // odd size: tests the padding
		{"data.tar" + ext, compressed},
	} {
		fmt.Fprintf(&ar, "%-16s%-12d%-6d%-6d%-8o%-10d`\n", m.name, 0, 0, 0, 0o100644, len(m.data))
		ar.Write(m.data)
		if len(m.data)%2 == 1 {
			ar.WriteByte('\n')
		}
	}
	return ar.Bytes(), nil
}

// Compress compresses data as ext says: "", ".gz", ".xz" or ".zst".
func Compress(ext string, data []byte) ([]byte, error) {
	var buf bytes.Buffer
	switch ext {
	case "":
		return data, nil
	case ".gz":
		return mustGzip(data), nil
	case ".xz":
		w, err := xz.NewWriter(&buf)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(data); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	case ".zst":
		w, err := zstd.NewWriter(nil)
		if err != nil {
			return nil, err
		}
		return w.EncodeAll(data, nil), nil
	}
	return nil, fmt.Errorf("unknown compression %q", ext)
}

func mustGzip(data []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(data)
	w.Close()
	return buf.Bytes()
}
