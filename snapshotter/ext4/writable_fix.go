package ext4

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32cRaw is ext4's crc32c: no inversion on entry or exit.
func crc32cRaw(crc uint32, b []byte) uint32 { return ^crc32.Update(^crc, castagnoli, b) }

// fixBlockBitmaps repairs what continuity v0.5.0's pkg/ext4.Create gets
// wrong, which makes e2fsck -fn fail for most sizes (every size whose last
// group is partial, and every size from about 8 GiB, where the metadata spills
// out of group 0):
//   - a partial last group is flagged BLOCK_UNINIT, which e2fsck forbids;
//   - block bitmaps of groups other than 0 and the last are never written,
//     although they are not flagged BLOCK_UNINIT.
//
// Create allocates everything contiguously from block 0, so in every group
// but the first the used blocks are a prefix of the group, as many as the
// descriptor's free count implies; Create also stored the checksum of the
// bitmap it meant to write. A group is only repaired when the bitmap rebuilt
// from that rule has the stored checksum, so an image laid out differently
// (a fixed continuity) is left alone.
func fixBlockBitmaps(f imageFile) error {
	g, err := readGeometry(f)
	if err != nil {
		return err
	}
	if g.roCompat&roCompatMetadataCs == 0 || !g.is64bit() {
		return nil // not the layout this repairs
	}
	var (
		le             = binary.LittleEndian
		bs             = g.blockSize
		blocks         = g.blocks
		firstDataBlock = g.firstDataBlock
		blocksPerGroup = g.blocksPerGroup
		descSize       = g.descSize
		groups         = g.groups
	)
	seed := crc32cRaw(^uint32(0), g.sb[0x68:0x78]) // s_uuid
	if g.incompat&incompatCsumSeed != 0 {
		seed = le.Uint32(g.sb[0x270:])
	}
	gdt, err := g.readGDT(f)
	if err != nil {
		return err
	}

	gdtChanged := false
	want := make([]byte, bs)
	have := make([]byte, bs)
	for g := uint64(1); g < groups; g++ {
		d := gdt[g*descSize : (g+1)*descSize]
		n := min(blocksPerGroup, blocks-firstDataBlock-g*blocksPerGroup)
		free := uint64(le.Uint16(d[0x0C:])) | uint64(le.Uint16(d[0x2C:]))<<16
		if free > n {
			continue
		}
		clear(want)
		setBitsFrom(want, n)
		setBitRange(want, 0, n-free)
		stored := uint32(le.Uint16(d[0x18:])) | uint32(le.Uint16(d[0x38:]))<<16
		if crc32cRaw(seed, want[:blocksPerGroup/8]) != stored {
			continue
		}
		loc := uint64(le.Uint32(d[0x0:])) | uint64(le.Uint32(d[0x20:]))<<32
		if loc == 0 || loc >= blocks {
			return fmt.Errorf("ext4 group %d: block bitmap block %d out of range", g, loc)
		}
		flags := le.Uint16(d[0x12:])
		if flags&bgBlockUninit != 0 {
			if g != groups-1 {
				continue // allowed anywhere but in the last group
			}
			le.PutUint16(d[0x12:], flags&^bgBlockUninit)
			le.PutUint16(d[0x1E:], groupDescCsum(seed, uint32(g), d))
			gdtChanged = true
		} else {
			if _, err := f.ReadAt(have, int64(loc*bs)); err != nil {
				return fmt.Errorf("reading block bitmap of group %d: %w", g, err)
			}
			if bytes.Equal(have, want) {
				continue
			}
		}
		if _, err := f.WriteAt(want, int64(loc*bs)); err != nil {
			return fmt.Errorf("writing block bitmap of group %d: %w", g, err)
		}
	}
	if gdtChanged {
		if _, err := f.WriteAt(gdt, g.gdtOffset()); err != nil {
			return fmt.Errorf("writing ext4 group descriptors: %w", err)
		}
	}
	return nil
}

// groupDescCsum is the metadata_csum checksum of group descriptor d.
func groupDescCsum(seed, group uint32, d []byte) uint16 {
	var g [4]byte
	binary.LittleEndian.PutUint32(g[:], group)
	c := crc32cRaw(seed, g[:])
	c = crc32cRaw(c, d[:0x1E])
	c = crc32cRaw(c, []byte{0, 0})
	c = crc32cRaw(c, d[0x20:])
	return uint16(c)
}

// setBitRange sets bits [from, to) of b.
func setBitRange(b []byte, from, to uint64) {
	for i := from; i < to; i++ {
		b[i/8] |= 1 << (i % 8)
	}
}
