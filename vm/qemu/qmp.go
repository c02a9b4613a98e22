//go:build linux

package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// qmpClient speaks the QEMU Machine Protocol: JSON objects, one a line,
// over a stream. One command is in flight at a time; events go to a
// callback on the reader goroutine.
type qmpClient struct {
	conn    net.Conn
	onEvent func(qmpEvent)

	mu     sync.Mutex // serializes commands
	nextID uint64

	greeting chan struct{} // closed when QEMU's greeting arrived
	replies  chan qmpMessage
	done     chan struct{} // closed when the reader ended
	err      error         // why; set before done is closed
}

type qmpEvent struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *qmpError) Error() string { return e.Class + ": " + e.Desc }

type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	ID     *uint64         `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
}

// newQMP starts reading conn. It owns conn: close it to stop the client.
func newQMP(conn net.Conn, onEvent func(qmpEvent)) *qmpClient {
	q := &qmpClient{
		conn:     conn,
		onEvent:  onEvent,
		greeting: make(chan struct{}),
		replies:  make(chan qmpMessage, 1),
		done:     make(chan struct{}),
	}
	go q.read()
	return q
}

func (q *qmpClient) read() {
	r := bufio.NewReaderSize(q.conn, 64<<10)
	greeted := false
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("qmp: connection closed: %w", errdefs.ErrUnavailable)
			} else {
				err = fmt.Errorf("qmp: %w: %w", err, errdefs.ErrUnavailable)
			}
			q.err = err
			close(q.done)
			return
		}
		var m qmpMessage
		if err := json.Unmarshal(line, &m); err != nil {
			continue // not ours to fix; a command waiting for it times out
		}
		switch {
		case m.QMP != nil:
			if !greeted {
				greeted = true
				close(q.greeting)
			}
		case m.Event != "":
			if q.onEvent != nil {
				q.onEvent(qmpEvent{Event: m.Event, Data: m.Data})
			}
		default:
			// A reply: drop a stale one (its command gave up) rather
			// than block the reader.
			select {
			case <-q.replies:
			default:
			}
			q.replies <- m
		}
	}
}

// handshake waits for the greeting and leaves capabilities negotiation
// mode, after which QEMU accepts commands and sends events.
func (q *qmpClient) handshake(ctx context.Context) error {
	select {
	case <-q.greeting:
	case <-q.done:
		return q.err
	case <-ctx.Done():
		return fmt.Errorf("qmp: waiting for greeting: %w", ctx.Err())
	}
	_, err := q.execute(ctx, "qmp_capabilities", nil)
	return err
}

// execute runs cmd and returns its "return" value.
func (q *qmpClient) execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return q.executeFD(ctx, cmd, args, nil)
}

// executeFD is execute with f passed along (SCM_RIGHTS), as getfd wants.
func (q *qmpClient) executeFD(ctx context.Context, cmd string, args any, f *os.File) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.nextID++
	id := q.nextID
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        uint64 `json:"id"`
	}{cmd, args, id}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case <-q.done:
		return nil, fmt.Errorf("qmp %s: %w", cmd, q.err)
	default:
	}
	// A unix socket write does not block for a line this small unless
	// QEMU stopped reading altogether; the reply wait below honours ctx.
	if f != nil {
		uc, ok := q.conn.(*net.UnixConn)
		if !ok {
			return nil, fmt.Errorf("qmp %s: passing a file needs a unix socket: %w", cmd, errdefs.ErrNotImplemented)
		}
		_, _, err = uc.WriteMsgUnix(append(b, '\n'), unix.UnixRights(int(f.Fd())), nil)
	} else {
		_, err = q.conn.Write(append(b, '\n'))
	}
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w: %w", cmd, err, errdefs.ErrUnavailable)
	}
	reply := func(m qmpMessage) (json.RawMessage, bool, error) {
		if m.ID == nil || *m.ID != id {
			return nil, false, nil
		}
		if m.Error != nil {
			return nil, true, fmt.Errorf("qmp %s: %w", cmd, m.Error)
		}
		return m.Return, true, nil
	}
	for {
		select {
		case m := <-q.replies:
			if ret, ok, err := reply(m); ok {
				return ret, err
			}
		case <-q.done:
			// QEMU answers "quit" and hangs up: a reply read before the
			// end still counts.
			select {
			case m := <-q.replies:
				if ret, ok, err := reply(m); ok {
					return ret, err
				}
			default:
			}
			return nil, fmt.Errorf("qmp %s: %w", cmd, q.err)
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
		}
	}
}

// close closes the connection and waits for the reader.
func (q *qmpClient) close() {
	q.conn.Close()
	<-q.done
}
