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
// lives from the stream's creation (or its FIN, whichever comes first) until
// the local side is done with the stream.
type finTracker struct {
	mu sync.Mutex
	m  map[uint32]*atomic.Bool
}

func newFinTracker() *finTracker {
	return &finTracker{m: make(map[uint32]*atomic.Bool)}
}

func (t *finTracker) get(id uint32) *atomic.Bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	f, ok := t.m[id]
	if !ok {
		f = new(atomic.Bool)
		t.m[id] = f
	}
	return f
}

func (t *finTracker) fin(id uint32) { t.get(id).Store(true) }

func (t *finTracker) release(id uint32) {
	t.mu.Lock()
	delete(t.m, id)
	t.mu.Unlock()
}

func (t *finTracker) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}
