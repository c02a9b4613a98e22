package transport

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestWake: the guest announces it is idle, the host reads that and wakes
// it with a seed and the time, which arrive whole even split in pieces;
// the guest's writes wait for the wake, and its reads go on after it.
func TestWake(t *testing.T) {
	guest, host := net.Pipe()
	defer host.Close()
	woke := make(chan Wake, 1)
	idle := make(chan error, 1)
	go func() { idle <- AwaitIdle(host) }()
	wc := NewWakeConn(guest, func(w Wake) error { woke <- w; return nil })
	defer wc.Close()
	if err := wc.Idle(); err != nil {
		t.Fatal(err)
	}
	if err := <-idle; err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() { _, err := wc.Write([]byte("ping")); wrote <- err }()
	select {
	case err := <-wrote:
		t.Fatalf("Write before the wake returned %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	read := make(chan string, 1)
	go func() {
		b := make([]byte, 5)
		n, err := io.ReadFull(wc, b)
		if err != nil {
			t.Error(err)
		}
		read <- string(b[:n])
	}()
	want := Wake{Time: time.Unix(1700000000, 123456789)}
	for i := range want.Seed {
		want.Seed[i] = byte(i * 7)
	}
	b, _ := want.MarshalBinary()
	msg := append(b, "after"...)
	for _, part := range [][]byte{msg[:3], msg[3:40], msg[40:]} {
		if _, err := host.Write(part); err != nil {
			t.Fatal(err)
		}
	}
	if w := <-woke; w.Seed != want.Seed || !w.Time.Equal(want.Time) {
		t.Errorf("woke with %+v, want %+v", w, want)
	}
	if got := <-read; got != "after" {
		t.Errorf("read after the wake %q, want %q", got, "after")
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(host, buf); err != nil || string(buf) != "ping" {
		t.Errorf("the write held back until the wake: %q, %v", buf, err)
	}
	if err := <-wrote; err != nil {
		t.Error(err)
	}
}

// eofOnce reads end-of-file first (a virtio-serial port with no host yet),
// then its data.
type eofOnce struct {
	io.Writer
	r    io.Reader
	eofs int
}

func (e *eofOnce) Read(p []byte) (int, error) {
	if e.eofs > 0 {
		e.eofs--
		return 0, io.EOF
	}
	return e.r.Read(p)
}

func (e *eofOnce) Close() error { return nil }

func TestWakeAfterEOFAndGarbage(t *testing.T) {
	w := Wake{Time: time.Now()}
	b, _ := w.MarshalBinary()
	var out bytes.Buffer
	wc := NewWakeConn(&eofOnce{Writer: &out, r: bytes.NewReader(append(b, 'x')), eofs: 3}, nil)
	if err := wc.Idle(); err != nil {
		t.Fatal(err)
	}
	if p := make([]byte, 1); func() error { _, err := wc.Read(p); return err }() != nil {
		t.Fatalf("Read after EOFs and a wake failed")
	}
	if out.String() != IdleMark {
		t.Errorf("announced %q", out.String())
	}
	bad := bytes.Repeat([]byte("x"), len(b))
	wc = NewWakeConn(&eofOnce{Writer: io.Discard, r: bytes.NewReader(bad)}, nil)
	if _, err := wc.Read(make([]byte, 1)); err == nil {
		t.Error("took garbage for a wake")
	}
	if _, err := wc.Write([]byte("x")); err == nil {
		t.Error("Write after a failed wake")
	}
	failing := errors.New("reseed failed")
	wc = NewWakeConn(&eofOnce{Writer: io.Discard, r: bytes.NewReader(b)}, func(Wake) error { return failing })
	if _, err := wc.Read(make([]byte, 1)); !errors.Is(err, failing) {
		t.Errorf("Read with a failing onWake: %v", err)
	}
	if err := AwaitIdle(bytes.NewReader([]byte("something else entirely"))); err == nil {
		t.Error("AwaitIdle took garbage for the idle mark")
	}
}

// TestWakeConnClose: Close ends a Write waiting for the wake.
func TestWakeConnClose(t *testing.T) {
	guest, host := net.Pipe()
	go io.Copy(io.Discard, host)
	wc := NewWakeConn(guest, nil)
	wrote := make(chan error, 1)
	go func() { _, err := wc.Write([]byte("x")); wrote <- err }()
	time.Sleep(20 * time.Millisecond)
	wc.Close()
	if err := <-wrote; err == nil {
		t.Error("Write went through a closed WakeConn")
	}
}
