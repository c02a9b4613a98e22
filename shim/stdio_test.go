package shim

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/fifo"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/api/stdio"
	"github.com/vz-shim/containerd-shim-vz/transport"
)

// fakeAgent accepts stdio streams as the agent does and hands them over.
func fakeAgent(t *testing.T) (transport.Unix, chan net.Conn) {
	t.Helper()
	tr := transport.Unix{Dir: filepath.Join(t.TempDir(), "s")}
	l, err := tr.Listen(agentapi.PortStdio)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	streams := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if _, err := stdio.ReadHeader(c); err != nil {
				t.Error(err)
				return
			}
			stdio.WriteAck(c, nil)
			streams <- c
		}
	}()
	return tr, streams
}

func TestHostIOFifos(t *testing.T) {
	tr, streams := fakeAgent(t)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	ctx := context.Background()
	// containerd's side: it opens the FIFOs itself.
	outR, err := fifo.OpenFifo(ctx, out, syscall.O_RDONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	inW, err := fifo.OpenFifo(ctx, in, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	h, err := openIO(ctx, tr, "c", "ns", in, out, "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	if err := h.startStdin(ctx); err != nil {
		t.Fatal(err)
	}
	if h.ids[0] == "" || h.ids[1] == "" || h.ids[2] != "" {
		t.Fatalf("stream ids %q", h.ids)
	}
	stdinS, stdoutS := <-streams, <-streams

	// stdin: the bytes, then, once the client closed its end and called
	// CloseIO, EOF in band after them.
	io.WriteString(inW, "to the guest")
	inW.Close()
	h.closeStdin()
	got, err := io.ReadAll(stdinS)
	if err != nil || string(got) != "to the guest" {
		t.Errorf("stdin stream carried %q, %v", got, err)
	}

	// stdout: what the guest sends reaches the FIFO, and wait returns
	// after it.
	io.WriteString(stdoutS, "from the guest")
	stdoutS.(transport.Conn).CloseWrite()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	h.wait(wctx)
	cancel()
	b := make([]byte, 64)
	n, _ := outR.Read(b)
	if string(b[:n]) != "from the guest" {
		t.Errorf("stdout FIFO got %q", b[:n])
	}
}

// TestHostIOStdinReattach: a client that closes its writer of the stdin
// FIFO without CloseIO and opens a new one later reaches the same process;
// the process sees EOF only after CloseIO (ctr attach; the runc shim holds a
// write end for this).
func TestHostIOStdinReattach(t *testing.T) {
	tr, streams := fakeAgent(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	ctx := context.Background()
	w1, err := fifo.OpenFifo(ctx, in, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	h, err := openIO(ctx, tr, "c", "ns", in, "", "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	if err := h.startStdin(ctx); err != nil {
		t.Fatal(err)
	}
	stdinS := <-streams
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(stdinS)
		got <- string(b)
	}()
	io.WriteString(w1, "first ")
	w1.Close() // detach
	select {
	case s := <-got:
		t.Fatalf("the process saw EOF when its client detached, after %q", s)
	case <-time.After(300 * time.Millisecond):
	}
	w2, err := fifo.OpenFifo(ctx, in, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w2, "second")
	w2.Close()
	h.closeStdin()
	select {
	case s := <-got:
		if s != "first second" {
			t.Errorf("stdin carried %q, want both writers' bytes", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no EOF after CloseIO")
	}
}

func TestHostIOFileAndBinary(t *testing.T) {
	tr, streams := fakeAgent(t)
	dir := t.TempDir()
	ctx := context.Background()

	// file://: stdout and stderr append to one file.
	logFile := filepath.Join(dir, "log")
	h, err := openIO(ctx, tr, "c", "ns", "", "file://"+logFile, "file://"+logFile, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"out\n", "err\n"} {
		c := <-streams
		io.WriteString(c, s)
		c.(transport.Conn).CloseWrite()
		time.Sleep(50 * time.Millisecond) // keep the order of the two lines
	}
	h.wait(ctx)
	h.close()
	if b, _ := os.ReadFile(logFile); string(b) != "out\nerr\n" {
		t.Errorf("log file %q", b)
	}

	// binary://: containerd's logging protocol (fds 3, 4 and 5).
	script := filepath.Join(dir, "logger.sh")
	outFile := filepath.Join(dir, "binary-out")
	os.WriteFile(script, []byte("#!/bin/sh\nexec 5>&-\ncat <&3 > "+outFile+"\n"), 0o755)
	h, err = openIO(ctx, tr, "c", "ns", "", "binary://"+script, "binary://"+script, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		c := <-streams
		io.WriteString(c, "logged\n")
		c.(transport.Conn).CloseWrite()
	}
	h.wait(ctx)
	h.close()
	if b, _ := os.ReadFile(outFile); !strings.Contains(string(b), "logged") {
		t.Errorf("logging binary wrote %q", b)
	}
}

// TestHostIODrainCut: output the guest never ends is cut once the drain
// timeout after the exit has passed, so that containerd's readers end.
func TestHostIODrainCut(t *testing.T) {
	ctx := context.Background()
	h, c, logFile := logToFile(t)
	sent := make(chan error, 1)
	go func() {
		zeros := make([]byte, 4096)
		for {
			if _, err := c.Write(zeros); err != nil {
				sent <- err
				return
			}
		}
	}()
	start := time.Now()
	h.drain(ctx, 200*time.Millisecond)
	if took := time.Since(start); took < 200*time.Millisecond || took > 5*time.Second {
		t.Errorf("drain of endless output returned after %s, want about 200ms", took)
	}
	select {
	case <-sent:
	case <-time.After(5 * time.Second):
		t.Fatal("the guest's stream was not cut")
	}
	if fi, err := os.Stat(logFile); err != nil || fi.Size() == 0 {
		t.Errorf("the output before the cut did not reach the log: %v", err)
	}
	if !h.wait(ctx) {
		t.Error("copying goes on after the cut")
	}
}

// TestHostIODrainEnds: output that ends is not cut.
func TestHostIODrainEnds(t *testing.T) {
	ctx := context.Background()
	h, c, logFile := logToFile(t)
	io.WriteString(c, "all of it\n")
	c.(transport.Conn).CloseWrite()
	h.drain(ctx, 10*time.Second)
	h.close()
	if b, _ := os.ReadFile(logFile); string(b) != "all of it\n" {
		t.Errorf("log %q", b)
	}
}

// logToFile opens the stdio of a process whose stdout goes to a file:// log,
// and returns it, the guest's end of the stdout stream, and the log's path.
func logToFile(t *testing.T) (*hostIO, net.Conn, string) {
	t.Helper()
	tr, streams := fakeAgent(t)
	logFile := filepath.Join(t.TempDir(), "log")
	h, err := openIO(context.Background(), tr, "c", "ns", "", "file://"+logFile, "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return h, <-streams, logFile
}
