package shim

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/containerd/log"
)

// The guest's console log is a file the VMM writes (QEMU's file chardev,
// VZ's file serial port attachment) with whatever the guest prints: a guest
// that prints without end must not fill the host's disk, nor the shim's
// memory when it quotes the log.

const (
	// maxConsoleLog is how large the console log may grow before it is
	// cut; a boot with loglevel=7 writes ~100 KiB.
	maxConsoleLog = 8 << 20
	// consoleCheck is how often its size is checked.
	consoleCheck = 2 * time.Second
	// consoleTailLen is how much of its end an error quotes.
	consoleTailLen = 2048
)

// boundConsole keeps the console log at path under max bytes until ctx
// ends: past it, the log is cut to its last max/4 bytes behind a note. The
// VMM appends (O_APPEND), so it goes on writing at the new end.
func boundConsole(ctx context.Context, path string, max int64, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := cutConsole(path, max); err != nil {
			log.G(ctx).WithError(err).Debug("bounding the console log")
		}
	}
}

// cutConsole cuts the log at path to its last max/4 bytes once it is past
// max. What the guest writes while it is cut may be lost.
func cutConsole(path string, max int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() <= max {
		return err
	}
	keep := make([]byte, max/4)
	n, err := f.ReadAt(keep, fi.Size()-int64(len(keep)))
	if err != nil && err != io.EOF {
		return err
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	note := fmt.Sprintf("[containerd-shim-vz: console log cut at %d bytes, its last %d follow]\n", fi.Size(), n)
	_, err = f.WriteAt(append([]byte(note), keep[:n]...), 0)
	return err
}

// consoleTail is the end of the console log at path, for an error message;
// it reads no more than it quotes.
func consoleTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return ""
	}
	b := make([]byte, min(fi.Size(), consoleTailLen))
	n, _ := f.ReadAt(b, fi.Size()-int64(len(b)))
	if n == 0 {
		return ""
	}
	return "\nguest console (last lines):\n" + strings.TrimSpace(string(b[:n]))
}
