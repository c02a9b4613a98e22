package testimage

import (
	"archive/tar"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
)

// BigFileSize is the size of /tricky/big in the tricky image.
const BigFileSize = 100 << 20

// TrickyXattr is the user xattr /tricky/xattr carries (as a PAX record).
const (
	TrickyXattrName  = "user.vztest"
	TrickyXattrValue = "hello xattr"
)

// PseudoRandom returns n deterministic pseudo-random bytes for seed: never all zero, the same on
// every run and machine.
func PseudoRandom(seed uint64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	copy(key[8:], "containerd-shim-vz testimage")
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

// Tricky returns the layers of the image the snapshotter tests pull: the busybox layer, then
// three layers that exercise what a layer may hold:
//
//  1. (gzip) /tricky: a file a later layer deletes, a directory a later layer makes opaque, a
//     hardlink pair, a symlink, a file with a user xattr (PAX), an empty file, a fifo, a char
//     device, files and a directory of non-root owners, a setuid file;
//  2. (zstd) /tricky/big: BigFileSize pseudo-random bytes;
//  3. (gzip) the whiteout of /tricky/deleted, /tricky/opaque made opaque with a new file in it,
//     and a new file.
//
// Merged, a container sees: no /tricky/deleted, only "new" in /tricky/opaque, hard1 and hard2 with
// two links, and everything else as written.
func Tricky(busybox string) ([]Layer, error) {
	base, err := BusyboxLayer(busybox)
	if err != nil {
		return nil, err
	}
	l1 := Layer{Compression: Gzip, Entries: []Entry{
		dir("tricky/", 0o755, 0, 0),
		file("tricky/deleted", 0o644, 0, 0, []byte("deleted by a later layer\n")),
		dir("tricky/opaque/", 0o755, 0, 0),
		file("tricky/opaque/old", 0o644, 0, 0, []byte("hidden by the opaque directory\n")),
		dir("tricky/opaque/olddir/", 0o700, 0, 0),
		file("tricky/opaque/olddir/deep", 0o600, 0, 0, []byte("hidden too\n")),
		file("tricky/hard1", 0o640, 1000, 1000, []byte("one inode, two names\n")),
		{Header: tar.Header{Typeflag: tar.TypeLink, Name: "tricky/hard2", Linkname: "tricky/hard1", Mode: 0o640, Uid: 1000, Gid: 1000}},
		{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: "tricky/symlink", Linkname: "hard1", Mode: 0o777}},
		{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: "tricky/abslink", Linkname: "/bin/busybox", Mode: 0o777}},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "tricky/xattr", Mode: 0o644,
			PAXRecords: map[string]string{"SCHILY.xattr." + TrickyXattrName: TrickyXattrValue}}, Data: []byte("has a user xattr\n")},
		file("tricky/empty", 0o644, 0, 0, nil),
		{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "tricky/fifo", Mode: 0o600}},
		{Header: tar.Header{Typeflag: tar.TypeChar, Name: "tricky/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		file("tricky/owned", 0o640, 1234, 5678, []byte("owned by 1234:5678\n")),
		dir("tricky/userdir/", 0o750, 1000, 1000),
		file("tricky/userdir/file", 0o600, 1000, 1000, []byte("in a user's directory\n")),
		file("tricky/setuid", 0o4755, 0, 0, []byte("#!/bin/sh\necho setuid\n")),
		file("tricky/setgid", 0o2755, 0, 50, []byte("#!/bin/sh\necho setgid\n")),
		dir("tricky/sticky/", 0o1777, 0, 0),
	}}
	l2 := Layer{Compression: Zstd, Entries: []Entry{
		dir("tricky/", 0o755, 0, 0),
		file("tricky/big", 0o644, 0, 0, PseudoRandom(1, BigFileSize)),
	}}
	l3 := Layer{Compression: Gzip, Entries: []Entry{
		dir("tricky/", 0o755, 0, 0),
		file("tricky/.wh.deleted", 0o644, 0, 0, nil),
		dir("tricky/opaque/", 0o755, 0, 0),
		file("tricky/opaque/.wh..wh..opq", 0o644, 0, 0, nil),
		file("tricky/opaque/new", 0o644, 0, 0, []byte("the only file left in the opaque directory\n")),
		file("tricky/added-late", 0o644, 0, 0, []byte("from the last layer\n")),
	}}
	return []Layer{base, l1, l2, l3}, nil
}

// Small is a one-layer image of a few small files, different for every seed.
func Small(seed int) Layer {
	return Layer{Compression: Gzip, Entries: []Entry{
		dir("small/", 0o755, 0, 0),
		file("small/hello", 0o644, 0, 0, []byte(fmt.Sprintf("small image %d\n", seed))),
	}}
}

func dir(name string, mode int64, uid, gid int) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: gid}}
}

func file(name string, mode int64, uid, gid int, data []byte) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: uid, Gid: gid}, Data: data}
}
