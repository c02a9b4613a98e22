package transport

import (
	"encoding/binary"
	"io"
	"sync"
	"sync/atomic"
)

// yamux v0.1.2 reads io.EOF from a stream both after the peer's FIN and
// after the session died (it force-closes every stream), so it cannot tell
// a finished stream from a truncated one. wire sits between yamux and the
// byte stream and watches the frames go by: it records each FIN before
// yamux sees it, and the first I/O error, which is why the session died.
//
// Frame layout (yamux spec.md): version(1) type(1) flags(2) stream(4)
// length(4), then length bytes of body for data frames only.
const (
	frameHeaderLen = 12
	frameTypeData  = 0
	frameFlagFIN   = 1 << 2
)

type wire struct {
	rwc  io.ReadWriteCloser
	fins *finTracker

	// Parser state; only yamux's receive goroutine calls Read.
	hdr    [frameHeaderLen]byte
	hn     int    // bytes of hdr filled
	body   uint32 // body bytes of the current frame still to pass
	finID  uint32 // stream whose FIN completes with the current body
	finSet bool
	lost   bool // not yamux framing: yamux is about to drop the session

	mu      sync.Mutex
	ioErr   error
	closing bool
}

func (w *wire) Read(p []byte) (int, error) {
	n, err := w.rwc.Read(p)
	if n > 0 && !w.lost {
		w.scan(p[:n])
	}
	if err != nil {
		w.fail(err)
	}
	return n, err
}

func (w *wire) Write(p []byte) (int, error) {
	n, err := w.rwc.Write(p)
	if err != nil {
		w.fail(err)
	}
	return n, err
}

func (w *wire) Close() error {
	w.mu.Lock()
	w.closing = true
	w.mu.Unlock()
	return w.rwc.Close()
}

// fail records the first I/O error, unless it is the echo of our own Close.
func (w *wire) fail(err error) {
	w.mu.Lock()
	if !w.closing && w.ioErr == nil {
		w.ioErr = err
	}
	w.mu.Unlock()
}

func (w *wire) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ioErr
}

func (w *wire) scan(b []byte) {
	for len(b) > 0 {
		if w.body > 0 {
			k := uint32(min(len(b), int(w.body)))
			w.body -= k
			b = b[k:]
			if w.body == 0 && w.finSet {
				w.finSet = false
				w.fins.fin(w.finID)
			}
			continue
		}
		k := copy(w.hdr[w.hn:], b)
		w.hn += k
		b = b[k:]
		if w.hn < frameHeaderLen {
			return
		}
		w.hn = 0
		if w.hdr[0] != 0 {
			w.lost = true
			return
		}
		flags := binary.BigEndian.Uint16(w.hdr[2:4])
		id := binary.BigEndian.Uint32(w.hdr[4:8])
		if w.hdr[1] == frameTypeData {
			w.body = binary.BigEndian.Uint32(w.hdr[8:12])
		}
		if flags&frameFlagFIN == 0 {
			continue
		}
		// A FIN on a data frame counts once its body is through, so a
		// frame cut short by the peer's death never passes for an
		// orderly end.
		if w.body > 0 {
			w.finID, w.finSet = id, true
			continue
		}
		w.fins.fin(id)
	}
}

// finTracker remembers which streams have received the peer's FIN. An entry
// lives from the stream's creation until the local side is done with the
// stream. A FIN may come before the stream's muxConn exists (the peer
// opened, wrote and closed at once): such an early FIN is kept until the
// stream is created, but only the last maxEarlyFins of them, because the
// peer may also send FINs for streams that never were or are long gone
// (hostile, or late), and each would otherwise stay for good.
type finTracker struct {
	mu    sync.Mutex
	m     map[uint32]*atomic.Bool
	early map[uint32]bool // FINs no stream claimed yet
	order []uint32        // early FINs, oldest first (claimed ones too)
}

// maxEarlyFins bounds the FINs kept for streams that do not exist (yet):
// more than the streams a peer can have waiting to be accepted.
const maxEarlyFins = 1024

func newFinTracker() *finTracker {
	return &finTracker{m: make(map[uint32]*atomic.Bool), early: make(map[uint32]bool)}
}

// get is the stream's flag, made when the local side creates the stream.
func (t *finTracker) get(id uint32) *atomic.Bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.early, id)
	f, ok := t.m[id]
	if !ok {
		f = new(atomic.Bool)
		t.m[id] = f
	}
	return f
}

// fin records the peer's FIN on stream id.
func (t *finTracker) fin(id uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f, ok := t.m[id]; ok {
		f.Store(true)
		return
	}
	f := new(atomic.Bool)
	f.Store(true)
	t.m[id] = f
	t.early[id] = true
	t.order = append(t.order, id)
	for len(t.order) > maxEarlyFins {
		old := t.order[0]
		t.order = t.order[1:]
		if t.early[old] {
			delete(t.early, old)
			delete(t.m, old)
		}
	}
}

func (t *finTracker) release(id uint32) {
	t.mu.Lock()
	delete(t.m, id)
	delete(t.early, id)
	t.mu.Unlock()
}

func (t *finTracker) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}
