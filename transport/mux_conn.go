package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/hashicorp/yamux"
)

// muxConn is a yamux stream with socket semantics:
//
//   - CloseWrite is yamux's Close: it sends FIN and reads go on.
//   - Close is a full close: it sends FIN if not yet sent, fails pending and
//     future reads and writes with net.ErrClosed, and discards whatever the
//     peer still sends until it closes too (yamux has no reset, and a peer
//     blocked on a full window would otherwise hang).
//   - A read that ends because the session died, not because of the
//     peer's FIN, fails with ErrPeerGone instead of returning io.EOF.
type muxConn struct {
	m     *Mux
	s     *yamux.Stream
	fin   *atomic.Bool // the peer's FIN has arrived
	local MuxAddr
	peer  MuxAddr

	// Readers hold rmu shared; the drain after Close takes it exclusively
	// to know that no reader is left before it clears the deadline that
	// kicked them out.
	rmu sync.RWMutex

	dmu    sync.Mutex // orders deadline changes against Close
	closed atomic.Bool
}

var _ Conn = (*muxConn)(nil)

func (m *Mux) newConn(s *yamux.Stream, local, peer MuxAddr) *muxConn {
	return &muxConn{m: m, s: s, fin: m.fins.get(s.StreamID()), local: local, peer: peer}
}

// handshake sends the header for port and waits for the acceptor's status.
func (c *muxConn) handshake(ctx context.Context, port uint32) error {
	var hdr [muxHdrLen]byte
	hdr[0], hdr[1] = muxMagic, muxVersion
	binary.BigEndian.PutUint32(hdr[2:], port)
	if _, err := c.Write(hdr[:]); err != nil {
		return err
	}

	stop := context.AfterFunc(ctx, func() { c.s.SetReadDeadline(time.Unix(1, 0)) })
	var status [1]byte
	_, err := io.ReadFull(c, status[:])
	if !stop() {
		return ctx.Err()
	}
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return errNoListener // closed without a status
	case err != nil:
		return err
	case status[0] == statusOK:
		return nil
	case status[0] == statusNoListener:
		return errNoListener
	case status[0] == statusBusy:
		return fmt.Errorf("listener backlog full: %w", errdefs.ErrUnavailable)
	case status[0] == statusBadHeader:
		return fmt.Errorf("peer rejected the stream header: %w", errdefs.ErrInvalidArgument)
	default:
		return fmt.Errorf("unknown stream status %d: %w", status[0], errdefs.ErrUnknown)
	}
}

// refuse tells the dialer why its stream is not accepted and closes it.
func (c *muxConn) refuse(status byte) {
	c.s.Write([]byte{status})
	c.Close()
}

func (c *muxConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil // yamux would block until data arrives
	}
	c.rmu.RLock()
	defer c.rmu.RUnlock()
	if c.closed.Load() {
		return 0, c.opErr("read", net.ErrClosed)
	}
	n, err := c.s.Read(b)
	if err != nil {
		err = c.mapErr("read", err)
	}
	return n, err
}

func (c *muxConn) Write(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.opErr("write", net.ErrClosed)
	}
	// yamux sends up to the whole window as one frame; smaller frames
	// keep other streams and keepalives moving.
	var total int
	for len(b) > 0 {
		chunk := b[:min(len(b), muxMaxFrame)]
		n, err := c.s.Write(chunk)
		total += n
		if err != nil {
			return total, c.mapErr("write", err)
		}
		b = b[n:]
	}
	return total, nil
}

// mapErr turns yamux's errors into socket-like ones.
func (c *muxConn) mapErr(op string, err error) error {
	if c.closed.Load() {
		return c.opErr(op, net.ErrClosed)
	}
	switch {
	case err == io.EOF:
		if c.fin.Load() {
			return io.EOF
		}
		// The only other way yamux ends a stream is force-closing it
		// with the session.
		if c.m.sess.IsClosed() {
			return c.opErr(op, c.m.sessionErr(err))
		}
		return c.opErr(op, io.ErrUnexpectedEOF)
	case errors.Is(err, yamux.ErrTimeout):
		return c.opErr(op, os.ErrDeadlineExceeded)
	case c.m.sess.IsClosed():
		return c.opErr(op, c.m.sessionErr(err))
	case errors.Is(err, yamux.ErrConnectionReset):
		return c.opErr(op, syscall.ECONNRESET)
	case errors.Is(err, yamux.ErrStreamClosed):
		// Only after our CloseWrite, as a socket would say.
		return c.opErr(op, syscall.EPIPE)
	default:
		return c.opErr(op, err)
	}
}

func (c *muxConn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "mux", Source: c.local, Addr: c.peer, Err: err}
}

// CloseWrite sends end-of-stream to the peer; reads go on.
func (c *muxConn) CloseWrite() error {
	if c.closed.Load() {
		return c.opErr("close", net.ErrClosed)
	}
	c.s.Close() // FIN; yamux always returns nil
	if c.m.sess.IsClosed() {
		return c.opErr("close", c.m.sessionErr(nil))
	}
	return nil
}

// Close closes both directions and releases the stream once the peer has
// closed its side too.
func (c *muxConn) Close() error {
	c.dmu.Lock()
	if c.closed.Swap(true) {
		c.dmu.Unlock()
		return c.opErr("close", net.ErrClosed)
	}
	// Kick readers blocked in yamux; they see closed and return.
	c.s.SetReadDeadline(time.Unix(1, 0))
	c.dmu.Unlock()
	go c.drain()
	return nil
}

// drain sends FIN (yamux waits for it to be written, which Close should
// not), keeps the peer's writes flowing into the void until the peer closes
// or the session ends, then forgets the stream.
func (c *muxConn) drain() {
	c.s.Close() // FIN if not sent yet; wakes blocked writers
	c.rmu.Lock()
	c.s.SetReadDeadline(time.Time{})
	c.rmu.Unlock()
	io.Copy(io.Discard, c.s)
	c.m.fins.release(c.s.StreamID())
}

func (c *muxConn) LocalAddr() net.Addr  { return c.local }
func (c *muxConn) RemoteAddr() net.Addr { return c.peer }

func (c *muxConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

func (c *muxConn) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.closed.Load() {
		return c.opErr("set", net.ErrClosed)
	}
	return c.s.SetReadDeadline(t)
}

func (c *muxConn) SetWriteDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.opErr("set", net.ErrClosed)
	}
	return c.s.SetWriteDeadline(t)
}
