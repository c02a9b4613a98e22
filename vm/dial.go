package vm

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/transport"
)

// DialRetry dials port until the agent listens there: while the guest boots
// a dial fails (nothing listens yet, or the transport is not up). It gives
// up when ctx ends or the VM stops.
func DialRetry(ctx context.Context, m Machine, port uint32) (transport.Conn, error) {
	// Short pauses: a failed dial is cheap (no transport yet, or one round
	// trip to a guest with nothing on the port), and a VM restored from a
	// template answers within a few hundred milliseconds of its start,
	// when every 10 ms of backoff show.
	backoff := 5 * time.Millisecond
	for {
		conn, err := m.Dial(ctx, port)
		if err == nil {
			return conn, nil
		}
		select {
		case <-m.Done():
			return nil, fmt.Errorf("the VM stopped before its agent answered (%v): %w", m.Err(), errdefs.ErrUnavailable)
		case <-ctx.Done():
			return nil, fmt.Errorf("no answer on port %d: %v: %w", port, err, ctx.Err())
		case <-time.After(backoff):
		}
		if backoff < 20*time.Millisecond {
			backoff *= 2
		}
	}
}
