package testimage

import "fmt"

// Bench returns the layers of the image the unpack benchmark pulls, about 200 MiB unpacked: two
// layers of many small files (one gzip, one zstd) and two of a few big pseudo-random files.
func Bench() []Layer {
	small := func(layer int, comp Compression) Layer {
		l := Layer{Compression: comp, Entries: []Entry{dir(fmt.Sprintf("bench%d/", layer), 0o755, 0, 0)}}
		for d := 0; d < 40; d++ {
			l.Entries = append(l.Entries, dir(fmt.Sprintf("bench%d/d%02d/", layer, d), 0o755, 0, 0))
			for f := 0; f < 200; f++ {
				size := 512 + (d*200+f)%3584 // 0.5 to 4 KiB
				seed := uint64(layer)<<32 | uint64(d*200+f)
				l.Entries = append(l.Entries, file(fmt.Sprintf("bench%d/d%02d/f%03d", layer, d, f), 0o644, 0, 0, PseudoRandom(seed, size)))
			}
		}
		return l
	}
	big := func(layer int, comp Compression, n, size int) Layer {
		l := Layer{Compression: comp, Entries: []Entry{dir(fmt.Sprintf("bench%d/", layer), 0o755, 0, 0)}}
		for i := 0; i < n; i++ {
			l.Entries = append(l.Entries, file(fmt.Sprintf("bench%d/big%d", layer, i), 0o644, 0, 0, PseudoRandom(uint64(layer)<<32|uint64(i), size)))
		}
		return l
	}
	return []Layer{
		small(0, Gzip),          // 8000 files, ~18 MiB
		big(1, Gzip, 3, 40<<20), // 120 MiB
		small(2, Zstd),          // 8000 files, ~18 MiB
		big(3, Zstd, 2, 22<<20), // 44 MiB
	}
}
