package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/mdlayher/vsock"
)

var _ Conn = (*vsock.Conn)(nil)

// Dial connects to port on v.CID. The connection is a *vsock.Conn.
func (v Vsock) Dial(ctx context.Context, port uint32) (Conn, error) {
	c, err := vsock.DialContext(ctx, v.CID, port, nil)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) {
			return nil, fmt.Errorf("transport: dial vsock cid %d port %d: %w: %w", v.CID, port, errNoListener, err)
		}
		return nil, fmt.Errorf("transport: dial vsock cid %d port %d: %w", v.CID, port, err)
	}
	return c, nil
}

// Listen listens on port of the local CID. Accept returns *vsock.Conn.
func (v Vsock) Listen(port uint32) (net.Listener, error) {
	l, err := vsock.Listen(port, nil)
	if err != nil {
		return nil, fmt.Errorf("transport: listen vsock port %d: %w", port, err)
	}
	return l, nil
}
