//go:build linux

package qemu

import (
	"io"
	"os"
	"strings"
)

// logTail returns the last lines of the file at path, at most max bytes,
// with control characters (the agent's log colours) removed, for error
// messages. It is "" when the file is missing or empty.
func logTail(path string, max int64) string {
	if path == "" {
		return ""
	}
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	// One byte more than max: whether it is a newline tells if the
	// first line is whole.
	off := fi.Size() - max - 1
	if off < 0 {
		off = 0
	}
	b, err := io.ReadAll(io.NewSectionReader(f, off, max+1))
	if err != nil {
		return ""
	}
	s := string(b)
	if off > 0 {
		i := strings.IndexByte(s, '\n')
		s = s[i+1:] // i == -1: one long line, keep it whole
	}
	return strings.TrimSpace(stripControl(s))
}

// stripControl removes ANSI escape sequences and control characters other
// than newline and tab.
func stripControl(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == 0x1b:
			// CSI: ESC [ params final-byte(0x40-0x7e); else skip ESC
			// and the one byte after it.
			if i+1 < len(s) && s[i+1] == '[' {
				i += 2
				for i < len(s) && (s[i] < 0x40 || s[i] > 0x7e) {
					i++
				}
			} else {
				i++
			}
		case c == '\n' || c == '\t' || c >= 0x20 && c != 0x7f:
			b.WriteByte(c)
		}
	}
	return b.String()
}
