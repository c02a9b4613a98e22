package transport

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Warm start over vsock (VZ). A saved VM keeps no vsock connection, so the
// template's agent cannot wait for its Wake on a connection opened before
// the save, as it does on the serial port (WakeConn). It listens on a port
// of its own instead (WakeGate), and the other listeners accept nothing
// until the Wake came: no request reaches a restored agent before its
// reseed and clock. The host, on each connection to the wake port, reads
// IdleMark (written once the agent is set up and idle); while it makes the
// template it then closes the connection and saves the VM; on a restored
// VM it writes the Wake and reads wakeAck (SendWake).

// wakeAck is the agent's answer once it applied a Wake.
const wakeAck = "vz-woken\n"

// WakeGate is the guest's side: Listeners of its Factory accept once the
// Wake was applied.
type WakeGate struct {
	ln     net.Listener
	onWake func(Wake) error

	idle    chan struct{}
	idleOne sync.Once
	woken   chan struct{}
	wokeOne sync.Once
}

// NewWakeGate serves the wake port on ln until ln is closed; onWake applies
// the Wake before any other listener accepts.
func NewWakeGate(ln net.Listener, onWake func(Wake) error) *WakeGate {
	g := &WakeGate{ln: ln, onWake: onWake, idle: make(chan struct{}), woken: make(chan struct{})}
	go g.serve()
	return g
}

// Idle says the agent is set up: the host may save the VM from now on.
func (g *WakeGate) Idle() { g.idleOne.Do(func() { close(g.idle) }) }

func (g *WakeGate) serve() {
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		// One at a time: the host has one connection open here at most.
		if g.handle(c) {
			return
		}
	}
}

// handle answers one connection; true once the VM was woken.
func (g *WakeGate) handle(c net.Conn) bool {
	defer c.Close()
	<-g.idle
	if _, err := io.WriteString(c, IdleMark); err != nil {
		return false
	}
	// The template's maker closes here (EOF): the VM is saved, and a
	// restored one gets a new connection.
	w, err := readWake(eofIsEnd{c})
	if err != nil {
		return false
	}
	if g.onWake != nil {
		if err := g.onWake(w); err != nil {
			return false
		}
	}
	g.wokeOne.Do(func() { close(g.woken) })
	_, _ = io.WriteString(c, wakeAck)
	return true
}

// Factory gates f: its listeners accept once the VM was woken.
func (g *WakeGate) Factory(f ListenerFactory) ListenerFactory {
	return gatedFactory{f: f, g: g}
}

type gatedFactory struct {
	f ListenerFactory
	g *WakeGate
}

func (f gatedFactory) Listen(port uint32) (net.Listener, error) {
	ln, err := f.f.Listen(port)
	if err != nil {
		return nil, err
	}
	return gatedListener{Listener: ln, woken: f.g.woken}, nil
}

type gatedListener struct {
	net.Listener
	woken chan struct{}
}

func (l gatedListener) Accept() (net.Conn, error) {
	<-l.woken
	return l.Listener.Accept()
}

// eofIsEnd makes readWake, which retries a read that finds no host on a
// serial port, give up at the end of a connection.
type eofIsEnd struct{ r io.Reader }

func (e eofIsEnd) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF && n == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	return n, err
}

// AwaitIdleConn is the host's side while a template boots, on a
// connection to the wake port: it reads the agent's IdleMark.
func AwaitIdleConn(ctx context.Context, c net.Conn) error {
	return bounded(ctx, c, func() error { return AwaitIdle(c) })
}

// SendWake wakes a restored VM on a connection to its wake port: it waits
// for the IdleMark, writes w and reads the agent's acknowledgement.
func SendWake(ctx context.Context, c net.Conn, w Wake) error {
	return bounded(ctx, c, func() error {
		if err := AwaitIdle(c); err != nil {
			return err
		}
		b, _ := w.MarshalBinary()
		if _, err := c.Write(b); err != nil {
			return fmt.Errorf("waking the restored agent: %w", err)
		}
		ack := make([]byte, len(wakeAck))
		if _, err := io.ReadFull(c, ack); err != nil || string(ack) != wakeAck {
			return fmt.Errorf("the restored agent did not take its wake (%q): %v", ack, err)
		}
		return nil
	})
}

// bounded runs fn, which reads and writes c, until ctx ends: then c's
// deadline passes, and fn's error says why.
func bounded(ctx context.Context, c net.Conn, fn func() error) error {
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if err := fn(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %w", err, ctx.Err())
		}
		return err
	}
	return nil
}
