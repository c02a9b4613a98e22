package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/hashicorp/yamux"
)

// Mux carries "dial port N" streams over a single byte stream with yamux.
// Both ends may Dial and Listen.
//
// Every stream opens with a 6-byte header from the dialer (magic, version,
// big-endian port) and a 1-byte status from the acceptor, sent when the
// stream is queued on the port's listener. So Dial costs one round trip,
// completes like a socket connect (before the peer's Accept), and fails with
// errdefs.ErrNotFound when nothing listens on the port.
//
// When the byte stream dies, every operation on the mux and on its open
// streams fails with an error wrapping [ErrPeerGone], except reads of a
// stream whose peer had already sent its end-of-stream: those return the
// remaining data and then io.EOF.
type Mux struct {
	sess  *yamux.Session
	wire  *wire
	fins  *finTracker
	log   *log.Entry
	close atomic.Bool // Close was called

	mu        sync.Mutex
	listeners map[uint32]*muxListener
	// routing bounds the incoming streams whose header is still awaited:
	// a peer can open streams without end (SECURITY.md).
	routing chan struct{}

	done chan struct{}
	err  error // set before done is closed
}

var (
	_ Dialer          = (*Mux)(nil)
	_ ListenerFactory = (*Mux)(nil)
)

// Tuning. The byte stream is a local virtio-serial port: latency is low and
// the peer is either alive or its VM is wedged.
const (
	// muxWindow is the per-stream receive window: large enough to keep a
	// virtio-serial link busy while the reader catches up.
	muxWindow = 4 << 20
	// muxMaxFrame bounds one data frame so streams share the wire fairly
	// and a frame never sits in the send queue long.
	muxMaxFrame = 256 << 10
	// muxKeepAlive pings an idle peer; with muxWriteTimeout as the ping's
	// deadline a hung peer is detected within ~40s.
	muxKeepAlive = 10 * time.Second
	// muxWriteTimeout bounds how long a frame may wait to be written, and
	// how long a ping waits for its answer.
	muxWriteTimeout = 30 * time.Second
	// muxOpenTimeout closes the whole session if the peer does not
	// acknowledge a new stream in time: its accept loop never blocks, so a
	// peer that does not answer is dead.
	muxOpenTimeout = 30 * time.Second
	// muxHeaderTimeout bounds how long an incoming stream may take to send
	// its header.
	muxHeaderTimeout = 10 * time.Second
)

// Stream header.
const (
	muxMagic   = 0x76 // 'v'
	muxVersion = 1
	muxHdrLen  = 6

	statusOK         = 0
	statusNoListener = 1
	statusBadHeader  = 2
	statusBusy       = 3
)

// NewMux starts a yamux session over rwc. One end must pass server=true and
// the other false. ctx only carries the logger: the session lives until
// Close or until rwc fails. The Mux owns rwc and closes it; closing rwc
// must unblock a pending Read (true of net.Conn and of an *os.File the
// runtime poller handles, such as a virtio-serial port), or Close hangs.
func NewMux(ctx context.Context, rwc io.ReadWriteCloser, server bool, opts ...MuxOption) (*Mux, error) {
	return newMux(ctx, rwc, server, func(c *yamux.Config) {
		for _, o := range opts {
			o(c)
		}
	})
}

// MuxOption adjusts a Mux.
type MuxOption func(*yamux.Config)

// WithoutKeepAlive stops this side from pinging its peer. It is for the
// host side of a VM: a paused guest cannot answer pings, and the VMM tells
// of a dead guest anyway (process exit, port closed).
func WithoutKeepAlive() MuxOption {
	return func(c *yamux.Config) { c.EnableKeepAlive = false }
}

// newMux lets tests shrink the timeouts.
func newMux(ctx context.Context, rwc io.ReadWriteCloser, server bool, tune func(*yamux.Config)) (*Mux, error) {
	entry := log.G(ctx).WithField("transport", "mux")
	fins := newFinTracker()
	w := &wire{rwc: rwc, fins: fins}
	cfg := &yamux.Config{
		AcceptBacklog:          256,
		EnableKeepAlive:        true,
		KeepAliveInterval:      muxKeepAlive,
		ConnectionWriteTimeout: muxWriteTimeout,
		MaxStreamWindowSize:    muxWindow,
		StreamOpenTimeout:      muxOpenTimeout,
		// yamux's close timeout resets a half-closed stream whose peer
		// has not sent FIN in time, and then reads io.EOF on it: that
		// would silently truncate a long-lived half-closed stream.
		StreamCloseTimeout: 0,
		Logger:             yamuxLogger{entry},
	}
	if tune != nil {
		tune(cfg)
	}
	var (
		sess *yamux.Session
		err  error
	)
	if server {
		sess, err = yamux.Server(w, cfg)
	} else {
		sess, err = yamux.Client(w, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("transport: mux: %w", err)
	}
	m := &Mux{
		sess:      sess,
		wire:      w,
		fins:      fins,
		log:       entry,
		listeners: make(map[uint32]*muxListener),
		routing:   make(chan struct{}, maxRouting),
		done:      make(chan struct{}),
	}
	go m.acceptLoop()
	return m, nil
}

// Done is closed when the session has ended, by Close or by peer death.
func (m *Mux) Done() <-chan struct{} { return m.done }

// Err is nil while the session runs. Afterwards it wraps net.ErrClosed if
// Close ended it, and ErrPeerGone (with the cause) otherwise.
func (m *Mux) Err() error {
	select {
	case <-m.done:
		return m.err
	default:
		return nil
	}
}

// Close ends the session and closes the byte stream. Open streams fail
// with an error wrapping net.ErrClosed. It waits for the accept loop.
func (m *Mux) Close() error {
	m.close.Store(true)
	m.sess.Close()
	<-m.done
	return nil
}

// Dial opens a stream to port of the peer. It returns when the peer has
// queued it for Accept; it fails with errdefs.ErrNotFound if nothing listens on port,
// with an ErrPeerGone error if the session is down, or with ctx's error.
func (m *Mux) Dial(ctx context.Context, port uint32) (Conn, error) {
	if err := m.Err(); err != nil {
		return nil, fmt.Errorf("transport: dial mux port %d: %w", port, err)
	}

	// OpenStream waits for its SYN to be written and, with many streams
	// pending, for a slot: run it aside so ctx is honoured.
	type opened struct {
		s   *yamux.Stream
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		s, err := m.sess.OpenStream()
		ch <- opened{s, err}
	}()
	var s *yamux.Stream
	select {
	case o := <-ch:
		if o.err != nil {
			return nil, fmt.Errorf("transport: dial mux port %d: %w", port, m.sessionErr(o.err))
		}
		s = o.s
	case <-ctx.Done():
		go func() {
			if o := <-ch; o.s != nil {
				m.newConn(o.s, MuxAddr{}, MuxAddr{}).Close()
			}
		}()
		return nil, fmt.Errorf("transport: dial mux port %d: %w", port, ctx.Err())
	}

	c := m.newConn(s, MuxAddr{Stream: s.StreamID()}, MuxAddr{Port: port, Stream: s.StreamID()})
	if err := c.handshake(ctx, port); err != nil {
		c.Close()
		return nil, fmt.Errorf("transport: dial mux port %d: %w", port, err)
	}
	return c, nil
}

// Listen registers port. Streams the peer dials to it are handed to the
// listener's Accept. A port has at most one listener (else
// errdefs.ErrAlreadyExists); closing the listener frees the port.
func (m *Mux) Listen(port uint32) (net.Listener, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.Err(); err != nil {
		return nil, fmt.Errorf("transport: listen mux port %d: %w", port, err)
	}
	if _, ok := m.listeners[port]; ok {
		return nil, fmt.Errorf("transport: listen mux port %d: %w", port, errdefs.ErrAlreadyExists)
	}
	l := &muxListener{
		m:      m,
		port:   port,
		ready:  make(chan struct{}, 1),
		closed: make(chan struct{}),
	}
	m.listeners[port] = l
	return l, nil
}

func (m *Mux) unlisten(l *muxListener) {
	m.mu.Lock()
	if m.listeners[l.port] == l {
		delete(m.listeners, l.port)
	}
	m.mu.Unlock()
}

func (m *Mux) acceptLoop() {
	for {
		s, err := m.sess.AcceptStream()
		if err != nil {
			if !m.sess.IsClosed() {
				// The window update acknowledging a stream timed
				// out; the session itself is still up.
				m.log.WithError(err).Warn("accepting mux stream")
				continue
			}
			m.finish(err)
			return
		}
		select {
		case m.routing <- struct{}{}:
			go func() {
				defer func() { <-m.routing }()
				m.route(s)
			}()
		default:
			// Too many streams say nothing: this one is reset, the
			// session lives on.
			m.log.WithField("stream", s.StreamID()).Debug("mux: too many streams awaiting their header, resetting")
			m.fins.release(s.StreamID())
			s.Close()
		}
	}
}

// maxRouting is how many incoming streams may await their header at once:
// a dialer writes it at once, so more than this are a peer that opens
// streams and says nothing on them.
const maxRouting = 256

// finish records why the session ended and releases waiters.
func (m *Mux) finish(acceptErr error) {
	ioErr := m.wire.err()
	switch {
	case ioErr != nil:
		// The byte stream failed before anyone closed it.
		m.err = peerGone(ioErr)
	case m.close.Load():
		m.err = fmt.Errorf("transport: mux closed: %w", net.ErrClosed)
	default:
		// yamux ended it: keepalive timeout or protocol error.
		m.err = peerGone(acceptErr)
	}
	close(m.done)
	m.log.WithError(m.err).Debug("mux session ended")
}

func peerGone(cause error) error {
	// Keep io.EOF out of the chain: callers test errors.Is(err, io.EOF)
	// for a clean end.
	if cause == nil || errors.Is(cause, io.EOF) {
		return fmt.Errorf("%w: byte stream closed", ErrPeerGone)
	}
	return fmt.Errorf("%w: %w", ErrPeerGone, cause)
}

// sessionErr maps an error from yamux to the session's fate if the session
// is over, and leaves it alone otherwise.
func (m *Mux) sessionErr(err error) error {
	if m.sess.IsClosed() {
		<-m.done
		return m.err
	}
	return err
}

// route reads an incoming stream's header and queues the stream on the
// listener of its port.
func (m *Mux) route(s *yamux.Stream) {
	c := m.newConn(s, MuxAddr{}, MuxAddr{Stream: s.StreamID()})
	var hdr [muxHdrLen]byte
	s.SetReadDeadline(time.Now().Add(muxHeaderTimeout))
	if _, err := io.ReadFull(s, hdr[:]); err != nil {
		c.Close()
		return
	}
	s.SetReadDeadline(time.Time{})
	if hdr[0] != muxMagic || hdr[1] != muxVersion {
		m.log.Warnf("mux stream %d: bad header %x", s.StreamID(), hdr)
		c.refuse(statusBadHeader)
		return
	}
	port := binary.BigEndian.Uint32(hdr[2:])
	c.local = MuxAddr{Port: port, Stream: s.StreamID()}

	m.mu.Lock()
	l := m.listeners[port]
	m.mu.Unlock()
	if l == nil {
		c.refuse(statusNoListener)
		return
	}
	l.enqueue(c)
}

// MuxAddr is the address of a mux stream: the port it was dialed to (zero
// on the dialer's local side) and its yamux stream ID.
type MuxAddr struct {
	Port   uint32
	Stream uint32
}

// Network implements net.Addr.
func (MuxAddr) Network() string { return "mux" }

func (a MuxAddr) String() string { return fmt.Sprintf("mux:%d/%d", a.Port, a.Stream) }

// muxBacklog bounds the streams queued on a listener that does not Accept.
const muxBacklog = 128

// muxListener queues incoming streams like a kernel listen backlog: the
// dialer's Dial completes when its stream is queued, not when it is
// accepted, so Dial-then-Accept in one goroutine works as with sockets.
type muxListener struct {
	m      *Mux
	port   uint32
	ready  chan struct{} // cap 1: queue may be non-empty
	closed chan struct{}

	mu       sync.Mutex
	queue    []*muxConn
	isClosed bool
}

// enqueue acknowledges c to its dialer and queues it for Accept.
func (l *muxListener) enqueue(c *muxConn) {
	l.mu.Lock()
	full, closed := len(l.queue) >= muxBacklog, l.isClosed
	l.mu.Unlock()
	switch {
	case closed:
		c.refuse(statusNoListener)
		return
	case full:
		c.refuse(statusBusy)
		return
	}
	// The status must be on the wire before Accept can hand c out, or it
	// could interleave with the acceptor's first write.
	if _, err := c.s.Write([]byte{statusOK}); err != nil {
		c.Close()
		return
	}
	l.mu.Lock()
	if l.isClosed {
		l.mu.Unlock()
		c.Close() // closed meanwhile: as if reset from the backlog
		return
	}
	l.queue = append(l.queue, c)
	l.mu.Unlock()
	select {
	case l.ready <- struct{}{}:
	default:
	}
}

// Accept returns the next queued stream. It returns net.ErrClosed after
// Close, and the mux's error once the session has ended.
func (l *muxListener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		if l.isClosed {
			l.mu.Unlock()
			return nil, fmt.Errorf("transport: accept mux port %d: %w", l.port, net.ErrClosed)
		}
		if err := l.m.Err(); err != nil {
			l.mu.Unlock()
			return nil, fmt.Errorf("transport: accept mux port %d: %w", l.port, err)
		}
		if len(l.queue) > 0 {
			c := l.queue[0]
			l.queue[0] = nil
			l.queue = l.queue[1:]
			more := len(l.queue) > 0
			l.mu.Unlock()
			if more {
				select {
				case l.ready <- struct{}{}:
				default:
				}
			}
			return c, nil
		}
		l.mu.Unlock()
		select {
		case <-l.ready:
		case <-l.closed:
		case <-l.m.done:
		}
	}
}

// Close unregisters the port: dials to it are refused from now on, and
// streams queued but not accepted are closed.
func (l *muxListener) Close() error {
	l.mu.Lock()
	if l.isClosed {
		l.mu.Unlock()
		return nil
	}
	l.isClosed = true
	queued := l.queue
	l.queue = nil
	close(l.closed)
	l.mu.Unlock()

	l.m.unlisten(l)
	for _, c := range queued {
		c.Close()
	}
	return nil
}

func (l *muxListener) Addr() net.Addr { return MuxAddr{Port: l.port} }

// yamuxLogger sends yamux's log lines to containerd's logger. Its errors
// are mostly the echo of a peer going away, reported through Err anyway.
type yamuxLogger struct{ l *log.Entry }

func (y yamuxLogger) Print(v ...any) { y.log(fmt.Sprint(v...)) }

func (y yamuxLogger) Printf(format string, v ...any) { y.log(fmt.Sprintf(format, v...)) }

func (y yamuxLogger) Println(v ...any) { y.log(fmt.Sprint(v...)) }

func (y yamuxLogger) log(msg string) {
	if strings.HasPrefix(msg, "[ERR]") {
		y.l.Warn(msg)
		return
	}
	y.l.Debug(msg)
}
