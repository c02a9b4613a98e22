package ext4

import (
	"encoding/binary"
	"fmt"
	"io"
)

// ext4 on-disk constants used by setInodeBitmapPadding.
const (
	superblockOffset = 1024
	superblockSize   = 1024
	ext4Magic        = 0xEF53

	incompat64bit      = 0x80
	roCompatGdtCsum    = 0x10
	roCompatMetadataCs = 0x400
	bgInodeUninit      = 0x1

	descSize32 = 32
	descSize64 = 64
)

type imageFile interface {
	io.ReaderAt
	io.WriterAt
}

// setInodeBitmapPadding sets, in every group's inode bitmap block, the bits
// past s_inodes_per_group. The kernel ignores them but e2fsck insists they are
// set ("Padding at end of inode bitmap is not set"), and tar2ext4 leaves them
// clear. Groups flagged INODE_UNINIT under a checksum feature are skipped:
// e2fsck and the kernel never read those blocks and synthesize the bitmap,
// padding included.
func setInodeBitmapPadding(f imageFile) error {
	sb := make([]byte, superblockSize)
	if _, err := f.ReadAt(sb, superblockOffset); err != nil {
		return fmt.Errorf("reading ext4 superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != ext4Magic {
		return fmt.Errorf("not an ext4 image: bad superblock magic")
	}
	var (
		blocksLo       = uint64(le.Uint32(sb[0x4:]))
		firstDataBlock = uint64(le.Uint32(sb[0x14:]))
		logBlockSize   = le.Uint32(sb[0x18:])
		blocksPerGroup = uint64(le.Uint32(sb[0x20:]))
		inodesPerGroup = uint64(le.Uint32(sb[0x28:]))
		incompat       = le.Uint32(sb[0x60:])
		roCompat       = le.Uint32(sb[0x64:])
		descSize       = uint64(le.Uint16(sb[0xFE:]))
		blocksHi       = uint64(le.Uint32(sb[0x150:]))
	)
	if logBlockSize > 6 {
		return fmt.Errorf("ext4 superblock: bad block size shift %d", logBlockSize)
	}
	bs := uint64(1024) << logBlockSize
	blocks := blocksLo
	if incompat&incompat64bit != 0 {
		blocks |= blocksHi << 32
		if descSize < descSize64 || descSize > bs || descSize&(descSize-1) != 0 {
			return fmt.Errorf("ext4 superblock: bad descriptor size %d", descSize)
		}
	} else {
		descSize = descSize32
	}
	if blocksPerGroup == 0 || inodesPerGroup == 0 || inodesPerGroup > bs*8 || blocks <= firstDataBlock {
		return fmt.Errorf("ext4 superblock: inconsistent geometry")
	}
	if inodesPerGroup == bs*8 {
		return nil // no padding
	}
	groups := (blocks - firstDataBlock + blocksPerGroup - 1) / blocksPerGroup
	csum := roCompat&(roCompatGdtCsum|roCompatMetadataCs) != 0

	gdt := make([]byte, groups*descSize)
	if _, err := f.ReadAt(gdt, int64((firstDataBlock+1)*bs)); err != nil {
		return fmt.Errorf("reading ext4 group descriptors: %w", err)
	}
	bitmap := make([]byte, bs)
	for g := range groups {
		d := gdt[g*descSize : (g+1)*descSize]
		if csum && le.Uint16(d[0x12:])&bgInodeUninit != 0 {
			continue
		}
		loc := uint64(le.Uint32(d[0x4:]))
		if descSize >= descSize64 {
			loc |= uint64(le.Uint32(d[0x24:])) << 32
		}
		if loc == 0 || loc >= blocks {
			return fmt.Errorf("ext4 group %d: inode bitmap block %d out of range", g, loc)
		}
		if _, err := f.ReadAt(bitmap, int64(loc*bs)); err != nil {
			return fmt.Errorf("reading inode bitmap of group %d: %w", g, err)
		}
		if !setBitsFrom(bitmap, inodesPerGroup) {
			continue
		}
		if _, err := f.WriteAt(bitmap, int64(loc*bs)); err != nil {
			return fmt.Errorf("writing inode bitmap of group %d: %w", g, err)
		}
	}
	return nil
}

// setBitsFrom sets every bit of b from bit n on and reports whether any bit
// changed.
func setBitsFrom(b []byte, n uint64) bool {
	changed := false
	for i := n; i < uint64(len(b))*8; {
		if i%8 == 0 {
			if b[i/8] != 0xff {
				b[i/8] = 0xff
				changed = true
			}
			i += 8
			continue
		}
		if m := byte(1) << (i % 8); b[i/8]&m == 0 {
			b[i/8] |= m
			changed = true
		}
		i++
	}
	return changed
}
