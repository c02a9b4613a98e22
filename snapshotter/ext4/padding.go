package ext4

import (
	"encoding/binary"
	"fmt"
)

// setInodeBitmapPadding sets, in every group's inode bitmap block, the bits
// past s_inodes_per_group. The kernel ignores them but e2fsck insists they are
// set ("Padding at end of inode bitmap is not set"), and tar2ext4 leaves them
// clear. Groups flagged INODE_UNINIT under a checksum feature are skipped:
// e2fsck and the kernel never read those blocks and synthesize the bitmap,
// padding included.
func setInodeBitmapPadding(f imageFile) error {
	g, err := readGeometry(f)
	if err != nil {
		return err
	}
	bs := g.blockSize
	if g.inodesPerGroup == bs*8 {
		return nil // no padding
	}
	csum := g.roCompat&(roCompatGdtCsum|roCompatMetadataCs) != 0
	gdt, err := g.readGDT(f)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	bitmap := make([]byte, bs)
	for i := range g.groups {
		d := gdt[i*g.descSize : (i+1)*g.descSize]
		if csum && le.Uint16(d[0x12:])&bgInodeUninit != 0 {
			continue
		}
		loc := uint64(le.Uint32(d[0x4:]))
		if g.descSize >= descSize64 {
			loc |= uint64(le.Uint32(d[0x24:])) << 32
		}
		if loc == 0 || loc >= g.blocks {
			return fmt.Errorf("ext4 group %d: inode bitmap block %d out of range", i, loc)
		}
		if _, err := f.ReadAt(bitmap, int64(loc*bs)); err != nil {
			return fmt.Errorf("reading inode bitmap of group %d: %w", i, err)
		}
		if !setBitsFrom(bitmap, g.inodesPerGroup) {
			continue
		}
		if _, err := f.WriteAt(bitmap, int64(loc*bs)); err != nil {
			return fmt.Errorf("writing inode bitmap of group %d: %w", i, err)
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
