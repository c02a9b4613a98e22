package shim

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBoundConsole: a guest that prints without end keeps its console log
// under the bound, with the end of what it printed and a note that it was
// cut; the writer (the VMM, appending) goes on writing.
func TestBoundConsole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { boundConsole(ctx, path, 64<<10, 5*time.Millisecond); close(done) }()
	line := bytes.Repeat([]byte("x"), 1023)
	for i := range 2000 {
		if _, err := w.Write(append(line, '\n')); err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	w.WriteString("the last line\n")
	time.Sleep(50 * time.Millisecond)
	cancel()
	<-done
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 64<<10+200<<10 {
		t.Errorf("console log of %d bytes after 2 MiB written, bound 64 KiB", fi.Size())
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), "console log cut at") || !strings.HasSuffix(string(b), "the last line\n") {
		t.Errorf("console log without the note or its end: %q...%q", b[:min(len(b), 100)], b[max(0, len(b)-100):])
	}
	if tail := consoleTail(path); !strings.HasSuffix(tail, "the last line") || len(tail) > consoleTailLen+100 {
		t.Errorf("consoleTail: %d bytes, ends %q", len(tail), tail[max(0, len(tail)-20):])
	}
}
