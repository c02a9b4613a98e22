package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/vz-shim/containerd-shim-vz/api/stdio"
)

const (
	// handshakeTimeout bounds how long a stdio connection may take to name
	// itself, so that a stuck peer cannot pin a goroutine.
	handshakeTimeout = 10 * time.Second
	// unclaimedTimeout is how long a stream may wait for the Create or Exec
	// that names it before the agent closes it.
	unclaimedTimeout = 2 * time.Minute
)

// halfCloser is a connection whose write side can be closed alone; every
// transport the agent runs on provides it.
type halfCloser interface {
	CloseWrite() error
}

// streams holds stdio connections between their handshake and the Create or
// Exec call that claims them by id.
type streams struct {
	faults *faults

	mu      sync.Mutex
	pending map[string]*pendingStream
}

type pendingStream struct {
	conn  net.Conn
	timer *time.Timer
}

func newStreams() *streams {
	return &streams{pending: make(map[string]*pendingStream)}
}

// serve accepts stdio connections until l is closed.
func (s *streams) serve(ctx context.Context, l net.Listener) error {
	for {
		conn, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accepting stdio connection: %w", err)
		}
		go s.handshake(ctx, conn)
	}
}

func (s *streams) handshake(ctx context.Context, conn net.Conn) {
	_ = conn.SetDeadline(time.Now().Add(handshakeTimeout))
	id, err := stdio.ReadHeader(conn)
	if err == nil {
		err = s.add(id, conn)
	}
	if aerr := stdio.WriteAck(conn, err); aerr != nil && err == nil {
		err = aerr
		s.remove(id)
	}
	if err != nil {
		log.G(ctx).WithError(err).Warn("stdio handshake failed")
		conn.Close()
		return
	}
	_ = conn.SetDeadline(time.Time{})
}

func (s *streams) add(id string, conn net.Conn) error {
	if _, ok := conn.(halfCloser); !ok {
		return fmt.Errorf("stdio connection %T cannot half-close: %w", conn, errdefs.ErrNotImplemented)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pending[id]; ok {
		return fmt.Errorf("stdio stream %q: %w", id, errdefs.ErrAlreadyExists)
	}
	s.pending[id] = &pendingStream{
		conn:  conn,
		timer: time.AfterFunc(unclaimedTimeout, func() { s.remove(id) }),
	}
	return nil
}

// remove drops and closes a stream nobody claimed.
func (s *streams) remove(id string) {
	s.mu.Lock()
	p, ok := s.pending[id]
	delete(s.pending, id)
	s.mu.Unlock()
	if ok {
		p.timer.Stop()
		p.conn.Close()
	}
}

// take claims the stream named id. An empty id means "no stream" and gives
// nil. The stream must have completed its handshake: the shim waits for the
// acknowledgement before it sends Create or Exec.
func (s *streams) take(id string) (net.Conn, error) {
	if id == "" {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pending[id]
	if !ok {
		return nil, fmt.Errorf("stdio stream %q was not opened: %w", id, errdefs.ErrNotFound)
	}
	delete(s.pending, id)
	p.timer.Stop()
	return p.conn, nil
}

// closeAll closes every unclaimed stream (agent shutdown).
func (s *streams) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, p := range s.pending {
		p.timer.Stop()
		p.conn.Close()
		delete(s.pending, id)
	}
}
