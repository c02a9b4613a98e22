package shim

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/log"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/transport"
)

// forwardDialTimeout bounds opening one forwarded stream to the agent.
const forwardDialTimeout = 10 * time.Second

// udpPeerIdle is how long a forwarded UDP peer may stay silent before its
// stream to the guest is closed.
const udpPeerIdle = 2 * time.Minute

// portForwarder makes the guest's listening sockets reachable on a
// loopback: it listens on 127.0.0.1 at the same port and carries each TCP
// connection, or each UDP peer's datagrams, to the agent over the
// shim–agent transport (agentapi.PortForward). No device, no network setup:
// it works on every backend and network mode. Two loopbacks take it: the
// host's (forward_ports), and that of the VM's network namespace, where a
// runc container's ports are too (CRI's port forward dials them there).
type portForwarder struct {
	dialer transport.Dialer
	host   string // "127.0.0.1"
	// enter runs fn with the calling thread in the loopback's network
	// namespace (the sockets it makes stay there); nil: the shim's own.
	enter func(fn func() error) error

	mu        sync.Mutex
	closed    bool
	full      bool                 // maxForwards reached (said once)
	listeners map[string]io.Closer // "tcp/8080"
}

func newPortForwarder(d transport.Dialer, enter func(fn func() error) error) *portForwarder {
	return &portForwarder{dialer: d, host: "127.0.0.1", enter: enter, listeners: map[string]io.Closer{}}
}

// maxForwards bounds the ports one VM's guest gets listened on for it: a
// guest announces what it likes, and each costs the shim a socket and a
// goroutine.
const maxForwards = 1024

// handle acts on one of the agent's PortEvents. A port the host cannot
// listen on (taken, privileged) is a warning, never a failed container.
func (f *portForwarder) handle(ctx context.Context, ev *agentapi.PortEvent) {
	if ev.Port == 0 || ev.Port > 65535 {
		log.G(ctx).WithField("port", ev.Port).Debug("not a port: not forwarded")
		return
	}
	key := ev.Protocol + "/" + strconv.Itoa(int(ev.Port))
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	if !ev.Listening {
		if l := f.listeners[key]; l != nil {
			l.Close()
			delete(f.listeners, key)
			log.G(ctx).WithField("port", key).Debug("port no longer forwarded")
		}
		return
	}
	if f.listeners[key] != nil {
		return
	}
	if len(f.listeners) >= maxForwards {
		if !f.full {
			f.full = true
			log.G(ctx).WithField("port", key).Warnf("the guest listens on more than %d ports: no more are forwarded", maxForwards)
		}
		return
	}
	addr := net.JoinHostPort(f.host, strconv.Itoa(int(ev.Port)))
	var (
		l   io.Closer
		err error
	)
	listen := func() error {
		switch ev.Protocol {
		case "tcp":
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			l = ln
			go f.serveTCP(ctx, ln, ev.Port)
		case "udp":
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				return err
			}
			l = pc
			go f.serveUDP(ctx, pc, ev.Port)
		default:
			return fmt.Errorf("unknown protocol %q", ev.Protocol)
		}
		return nil
	}
	if f.enter != nil {
		err = f.enter(listen)
	} else {
		err = listen()
	}
	if err != nil {
		log.G(ctx).WithError(err).WithField("port", key).Warn("cannot forward the container's port to the loopback")
		return
	}
	f.listeners[key] = l
	log.G(ctx).WithField("port", key).WithField("address", addr).Info("forwarding the container's port")
}

// close stops every forward.
func (f *portForwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for k, l := range f.listeners {
		l.Close()
		delete(f.listeners, k)
	}
}

// open dials the agent's forward port for proto/port.
func (f *portForwarder) open(ctx context.Context, proto string, port uint32) (transport.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, forwardDialTimeout)
	defer cancel()
	c, err := f.dialer.Dial(dctx, agentapi.PortForward)
	if err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(c, "%s %d\n", proto, port); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (f *portForwarder) serveTCP(ctx context.Context, ln net.Listener, port uint32) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			g, err := f.open(ctx, "tcp", port)
			if err != nil {
				log.G(ctx).WithError(err).WithField("port", port).Debug("forwarding a connection")
				return
			}
			defer g.Close()
			done := make(chan struct{})
			go func() {
				io.Copy(g, c)
				g.CloseWrite()
				close(done)
			}()
			io.Copy(c, g)
			c.(*net.TCPConn).CloseWrite()
			<-done
		}()
	}
}

// serveUDP gives each peer that sends to the port a stream of its own, so
// that the answers find their way back to it.
func (f *portForwarder) serveUDP(ctx context.Context, pc net.PacketConn, port uint32) {
	var (
		mu    sync.Mutex
		peers = map[string]transport.Conn{}
	)
	defer func() {
		mu.Lock()
		for _, g := range peers {
			g.Close()
		}
		mu.Unlock()
	}()
	buf := make([]byte, 2+65535)
	for {
		n, from, err := pc.ReadFrom(buf[2:])
		if err != nil {
			return
		}
		key := from.String()
		mu.Lock()
		g := peers[key]
		mu.Unlock()
		if g == nil {
			if g, err = f.open(ctx, "udp", port); err != nil {
				log.G(ctx).WithError(err).WithField("port", port).Debug("forwarding a datagram")
				continue
			}
			mu.Lock()
			peers[key] = g
			mu.Unlock()
			go func() {
				defer func() {
					mu.Lock()
					delete(peers, key)
					mu.Unlock()
					g.Close()
				}()
				var hdr [2]byte
				rb := make([]byte, 65535)
				for {
					g.SetReadDeadline(time.Now().Add(udpPeerIdle))
					if _, err := io.ReadFull(g, hdr[:]); err != nil {
						return
					}
					l := int(binary.BigEndian.Uint16(hdr[:]))
					if _, err := io.ReadFull(g, rb[:l]); err != nil {
						return
					}
					if _, err := pc.WriteTo(rb[:l], from); err != nil && !errors.Is(err, net.ErrClosed) {
						return
					}
				}
			}()
		}
		binary.BigEndian.PutUint16(buf, uint16(n))
		if _, err := g.Write(buf[:n+2]); err != nil {
			g.Close()
		}
	}
}
