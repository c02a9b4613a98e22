// Package transport carries "dial port N" stream connections between the
// host-side shim and the guest agent.
//
// Three backends share one contract (see DESIGN.md §4):
//
//   - [Vsock]: AF_VSOCK, when the VM has a vsock device.
//   - [Mux]: a yamux session over one byte stream (virtio-serial), when it
//     has not.
//   - [Unix]: one unix socket per port in a directory, for tests and for
//     running the agent outside a VM.
//
// Every connection supports half-close ([Conn.CloseWrite]), so a writer can
// signal end-of-stream after its last byte while still reading the reply.
package transport

import (
	"context"
	"fmt"
	"net"

	"github.com/containerd/errdefs"
)

// Conn is a stream connection that supports half-close: CloseWrite sends EOF
// to the peer while reads go on.
type Conn interface {
	net.Conn
	CloseWrite() error
}

// Dialer opens a connection to a port of the peer.
type Dialer interface {
	Dial(ctx context.Context, port uint32) (Conn, error)
}

// ListenerFactory listens on ports. Accept of the returned net.Listener
// returns values that implement Conn.
type ListenerFactory interface {
	Listen(port uint32) (net.Listener, error)
}

// ErrPeerGone is returned (wrapped) by every operation on a [Mux] and its
// streams once the byte stream under the mux died without an orderly
// end-of-stream: the peer closed it, crashed, or stopped answering
// keepalives. It is never io.EOF, so a truncated stream cannot be mistaken
// for a complete one. It is classed as errdefs.ErrUnavailable.
var ErrPeerGone error = errPeerGone{}

type errPeerGone struct{}

func (errPeerGone) Error() string { return "peer gone" }
func (errPeerGone) Unwrap() error { return errdefs.ErrUnavailable }

// errNoListener classes a refused dial on every backend, so callers waiting
// for the agent can retry on errdefs.IsNotFound.
var errNoListener = fmt.Errorf("no listener: %w", errdefs.ErrNotFound)
