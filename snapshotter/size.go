package snapshotter

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/docker/go-units"
)

// ParseSize parses a size in bytes ("10737418240") or with a binary unit
// ("10GiB", "10G", "512m").
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, nil
	}
	n, err := units.RAMInBytes(s)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: %w", s, err)
	}
	return n, nil
}

// allocated returns the bytes a file takes on disk.
func allocated(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512, nil
	}
	return fi.Size(), nil
}
