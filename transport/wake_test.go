package transport

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// TestWake: the guest announces it is idle, the host reads that and wakes
// it with a seed and the time, which arrive whole even split in pieces.
func TestWake(t *testing.T) {
	guest, host := net.Pipe()
	defer guest.Close()
	defer host.Close()
	got := make(chan Wake, 1)
	errc := make(chan error, 1)
	go func() {
		w, err := AwaitWake(guest)
		errc <- err
		got <- w
	}()
	if err := AwaitIdle(host); err != nil {
		t.Fatal(err)
	}
	want := Wake{Time: time.Unix(1700000000, 123456789)}
	for i := range want.Seed {
		want.Seed[i] = byte(i * 7)
	}
	b, _ := want.MarshalBinary()
	for _, part := range [][]byte{b[:3], b[3:40], b[40:]} {
		if _, err := host.Write(part); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	w := <-got
	if w.Seed != want.Seed || !w.Time.Equal(want.Time) {
		t.Errorf("woke with %+v, want %+v", w, want)
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

func TestWakeAfterEOFAndGarbage(t *testing.T) {
	w := Wake{Time: time.Now()}
	b, _ := w.MarshalBinary()
	var out bytes.Buffer
	if _, err := AwaitWake(&eofOnce{Writer: &out, r: bytes.NewReader(b), eofs: 3}); err != nil {
		t.Fatalf("AwaitWake after EOFs: %v", err)
	}
	if out.String() != IdleMark {
		t.Errorf("announced %q", out.String())
	}
	bad := bytes.Repeat([]byte("x"), len(b))
	if _, err := AwaitWake(&eofOnce{Writer: io.Discard, r: bytes.NewReader(bad)}); err == nil {
		t.Error("AwaitWake took garbage for a wake")
	}
	if err := AwaitIdle(bytes.NewReader([]byte("something else entirely"))); err == nil {
		t.Error("AwaitIdle took garbage for the idle mark")
	}
}
