package ext4

import (
	"encoding/binary"
	"fmt"
	"io"
)

// ext4 on-disk constants used by the repairs (padding.go, writable_fix.go).
const (
	superblockOffset = 1024
	superblockSize   = 1024
	ext4Magic        = 0xEF53

	incompat64bit      = 0x80
	incompatCsumSeed   = 0x2000
	roCompatGdtCsum    = 0x10
	roCompatMetadataCs = 0x400
	bgInodeUninit      = 0x1
	bgBlockUninit      = 0x2

	descSize32 = 32
	descSize64 = 64
)

type imageFile interface {
	io.ReaderAt
	io.WriterAt
}

// geometry is what the repairs need of an ext4 superblock, checked for
// consistency so that a damaged image cannot send them to odd offsets.
type geometry struct {
	sb             []byte // the raw superblock
	blockSize      uint64
	blocks         uint64
	firstDataBlock uint64
	blocksPerGroup uint64
	inodesPerGroup uint64
	groups         uint64
	descSize       uint64
	incompat       uint32
	roCompat       uint32
}

func readGeometry(f imageFile) (geometry, error) {
	sb := make([]byte, superblockSize)
	if _, err := f.ReadAt(sb, superblockOffset); err != nil {
		return geometry{}, fmt.Errorf("reading ext4 superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != ext4Magic {
		return geometry{}, fmt.Errorf("not an ext4 image: bad superblock magic")
	}
	logBlockSize := le.Uint32(sb[0x18:])
	if logBlockSize > 6 {
		return geometry{}, fmt.Errorf("ext4 superblock: bad block size shift %d", logBlockSize)
	}
	g := geometry{
		sb:             sb,
		blockSize:      uint64(1024) << logBlockSize,
		blocks:         uint64(le.Uint32(sb[0x4:])),
		firstDataBlock: uint64(le.Uint32(sb[0x14:])),
		blocksPerGroup: uint64(le.Uint32(sb[0x20:])),
		inodesPerGroup: uint64(le.Uint32(sb[0x28:])),
		incompat:       le.Uint32(sb[0x60:]),
		roCompat:       le.Uint32(sb[0x64:]),
		descSize:       descSize32,
	}
	if g.is64bit() {
		g.blocks |= uint64(le.Uint32(sb[0x150:])) << 32
		g.descSize = uint64(le.Uint16(sb[0xFE:]))
		if g.descSize < descSize64 || g.descSize > g.blockSize || g.descSize&(g.descSize-1) != 0 {
			return geometry{}, fmt.Errorf("ext4 superblock: bad descriptor size %d", g.descSize)
		}
	}
	bits := g.blockSize * 8
	if g.blocksPerGroup == 0 || g.blocksPerGroup > bits || g.inodesPerGroup == 0 || g.inodesPerGroup > bits || g.blocks <= g.firstDataBlock {
		return geometry{}, fmt.Errorf("ext4 superblock: inconsistent geometry")
	}
	g.groups = (g.blocks - g.firstDataBlock + g.blocksPerGroup - 1) / g.blocksPerGroup
	return g, nil
}

func (g geometry) is64bit() bool { return g.incompat&incompat64bit != 0 }

// gdtOffset is where the group descriptor table starts: the block after the
// superblock's.
func (g geometry) gdtOffset() int64 { return int64((g.firstDataBlock + 1) * g.blockSize) }

// readGDT reads the whole group descriptor table.
func (g geometry) readGDT(f imageFile) ([]byte, error) {
	gdt := make([]byte, g.groups*g.descSize)
	if _, err := f.ReadAt(gdt, g.gdtOffset()); err != nil {
		return nil, fmt.Errorf("reading ext4 group descriptors: %w", err)
	}
	return gdt, nil
}
