//go:build !linux

package transport

import (
	"context"
	"fmt"
	"net"

	"github.com/containerd/errdefs"
)

// Dial is not implemented outside Linux.
func (v Vsock) Dial(ctx context.Context, port uint32) (Conn, error) {
	return nil, fmt.Errorf("transport: vsock dial: %w", errdefs.ErrNotImplemented)
}

// Listen is not implemented outside Linux.
func (v Vsock) Listen(port uint32) (net.Listener, error) {
	return nil, fmt.Errorf("transport: vsock listen: %w", errdefs.ErrNotImplemented)
}
