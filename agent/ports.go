package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

// portPollInterval is how often the agent looks for sockets that started or
// stopped listening. /proc/net is the only place that lists them all, and
// reading it costs little.
const portPollInterval = 500 * time.Millisecond

// listenKey is one listening socket as the shim forwards it.
type listenKey struct {
	proto string // "tcp" or "udp"
	port  uint32
}

// portWatch publishes the VM's listening sockets and remembers where each
// is reached from inside the VM, for the forwarded connections.
type portWatch struct {
	procNet string
	events  *eventQueue

	once sync.Once
	mu   sync.Mutex
	dial map[listenKey]netip.Addr // the address to dial for each
}

func newPortWatch(procNet string, events *eventQueue) *portWatch {
	return &portWatch{procNet: procNet, events: events, dial: map[listenKey]netip.Addr{}}
}

// start runs the watch until ctx ends; a second call does nothing.
func (w *portWatch) start(ctx context.Context) {
	w.once.Do(func() { go w.run(ctx) })
}

func (w *portWatch) run(ctx context.Context) {
	tick := time.NewTicker(portPollInterval)
	defer tick.Stop()
	for {
		now, err := listeningSockets(w.procNet)
		if err != nil {
			log.G(ctx).WithError(err).Warn("listing listening sockets")
		} else {
			w.update(ctx, now)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// update publishes what changed since the last look.
func (w *portWatch) update(ctx context.Context, now map[listenKey]netip.Addr) {
	w.mu.Lock()
	old := w.dial
	w.dial = now
	w.mu.Unlock()
	for k := range now {
		if _, ok := old[k]; !ok {
			_ = w.events.Publish(ctx, agentapi.PortEventTopic, &agentapi.PortEvent{Protocol: k.proto, Port: k.port, Listening: true})
		}
	}
	for k := range old {
		if _, ok := now[k]; !ok {
			_ = w.events.Publish(ctx, agentapi.PortEventTopic, &agentapi.PortEvent{Protocol: k.proto, Port: k.port, Listening: false})
		}
	}
}

// target is where a forwarded connection to proto/port goes in the VM.
func (w *portWatch) target(proto string, port uint32) (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	a, ok := w.dial[listenKey{proto, port}]
	if !ok {
		return "", false
	}
	return net.JoinHostPort(a.String(), strconv.Itoa(int(port))), true
}

// listeningSockets reads the TCP sockets in LISTEN and the unconnected UDP
// sockets bound outside the ephemeral port range (those are clients') from
// dir (/proc/net). A socket bound to every address is dialled on loopback.
func listeningSockets(dir string) (map[listenKey]netip.Addr, error) {
	lo, hi := ephemeralRange()
	out := map[listenKey]netip.Addr{}
	for _, f := range []struct {
		name, proto, state string
	}{{"tcp", "tcp", "0A"}, {"tcp6", "tcp", "0A"}, {"udp", "udp", "07"}, {"udp6", "udp", "07"}} {
		file, err := os.Open(filepath.Join(dir, f.name))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // no IPv6
			}
			return nil, err
		}
		sc := bufio.NewScanner(file)
		sc.Scan() // the header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 || fields[3] != f.state {
				continue
			}
			addr, port, err := parseProcAddr(fields[1])
			if err != nil {
				continue
			}
			if f.proto == "udp" {
				if _, rport, err := parseProcAddr(fields[2]); err != nil || rport != 0 || (port >= lo && port <= hi) {
					continue
				}
			}
			if addr.IsUnspecified() {
				addr = netip.AddrFrom4([4]byte{127, 0, 0, 1})
				if f.name == "tcp6" || f.name == "udp6" {
					addr = netip.IPv6Loopback()
				}
			}
			k := listenKey{f.proto, port}
			// IPv4 first: a dual-stack server answers on either.
			if prev, ok := out[k]; !ok || (!prev.Is4() && addr.Is4()) {
				out[k] = addr
			}
		}
		file.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ephemeralRange is the kernel's local port range (clients' ports).
func ephemeralRange() (uint32, uint32) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		f := strings.Fields(string(b))
		if len(f) == 2 {
			lo, err1 := strconv.ParseUint(f[0], 10, 16)
			hi, err2 := strconv.ParseUint(f[1], 10, 16)
			if err1 == nil && err2 == nil {
				return uint32(lo), uint32(hi)
			}
		}
	}
	return 32768, 60999
}

// parseProcAddr reads "0100007F:1F90" (IPv4) or 32 hex digits and a port
// (IPv6): each 32-bit word of the address is in host (little-endian) order.
func parseProcAddr(s string) (netip.Addr, uint32, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, err
	}
	raw, err := hex.DecodeString(h)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, 0, fmt.Errorf("bad address %q", s)
	}
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	a, _ := netip.AddrFromSlice(raw)
	return a.Unmap(), uint32(port), nil
}

// maxDatagram bounds one forwarded UDP datagram (the 2-byte length's limit).
const maxDatagram = 65535

// serveForward accepts the shim's PortForward streams until l closes.
func (w *portWatch) serveForward(ctx context.Context, l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accepting on the forward port: %w", err)
		}
		go func() {
			if err := w.forward(c); err != nil {
				log.G(ctx).WithError(err).Debug("forwarded connection")
			}
		}()
	}
}

// forward joins one stream from the shim to the VM's socket it names.
func (w *portWatch) forward(c net.Conn) error {
	defer c.Close()
	br := bufio.NewReader(io.LimitReader(c, 64))
	line, err := br.ReadString('\n')
	if err != nil {
		return fmt.Errorf("forward header: %w", err)
	}
	proto, p, _ := strings.Cut(strings.TrimSpace(line), " ")
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || (proto != "tcp" && proto != "udp") {
		return fmt.Errorf("forward header %q", line)
	}
	target, ok := w.target(proto, uint32(port))
	if !ok {
		return fmt.Errorf("%s port %d does not listen", proto, port)
	}
	// What the header read took beyond the line is the first data.
	rest := io.MultiReader(buffered(br), c)
	if proto == "tcp" {
		t, err := net.Dial("tcp", target)
		if err != nil {
			return err
		}
		defer t.Close()
		return splice(c, rest, t.(*net.TCPConn))
	}
	u, err := net.Dial("udp", target)
	if err != nil {
		return err
	}
	defer u.Close()
	go func() {
		buf := make([]byte, maxDatagram+2)
		for {
			n, err := u.Read(buf[2:])
			if err != nil {
				c.Close()
				return
			}
			binary.BigEndian.PutUint16(buf, uint16(n))
			if _, err := c.Write(buf[:n+2]); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, maxDatagram)
	var n [2]byte
	for {
		if _, err := io.ReadFull(rest, n[:]); err != nil {
			return nil
		}
		l := int(binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(rest, buf[:l]); err != nil {
			return err
		}
		if _, err := u.Write(buf[:l]); err != nil {
			return err
		}
	}
}

// buffered is what r has buffered, as a reader.
func buffered(r *bufio.Reader) io.Reader {
	b, _ := r.Peek(r.Buffered())
	return strings.NewReader(string(b))
}

// splice copies both ways; each direction's end is passed on as a
// half-close, so that a client that shuts its sending side down still gets
// the whole answer.
func splice(c net.Conn, from io.Reader, t *net.TCPConn) error {
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(t, from)
		_ = t.CloseWrite()
		done <- err
	}()
	_, err := io.Copy(c, t)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	if err2 := <-done; err == nil {
		err = err2
	}
	return err
}
