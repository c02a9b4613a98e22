//go:build hostile

package agent

import (
	"context"
	"encoding/binary"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/transport"
)

// The hostile test build (go build -tags hostile) is the agent of a guest
// that lies: integration/hostile_test.go boots it with vz.hostile=<mode> to
// check that the host side holds (SECURITY.md). Each mode is one misdeed.
const (
	// faultEvents: every event stream starts with a flood of forged
	// events: exits of tasks that are not in this VM, of execs that do not
	// exist, events under topics the agent never uses, undecodable ones,
	// and port announcements without end.
	faultEvents = "events"
	// faultReplies: State and Pids answer with another task's ids, paths
	// that climb out, and pid 1 for every process. (The bundle's path,
	// which Create answers, goes only back to the guest.)
	faultReplies = "replies"
	// faultOversized: the answer to Pids is a ttrpc frame of 5 MiB, over
	// ttrpc's 4 MiB bound.
	faultOversized = "oversized"
	// faultSilent: after the first Start, no call is ever answered and no
	// event sent again; the VM runs on.
	faultSilent = "silent"
	// faultMute: the agent accepts the host's connection and answers no
	// call at all, the first (at boot) included.
	faultMute = "mute"
	// faultPanic: Start kills the agent, PID 1: the kernel panics.
	faultPanic = "panic"
	// faultStdio: no output stream ever ends: at the process's end the
	// agent sends zeros for as long as the host reads them.
	faultStdio = "stdio"
	// faultStreams: after Start the guest opens thousands of streams to
	// the host and names none.
	faultStreams = "streams"
	// faultBadFrame: after Start the guest writes a frame with a bad
	// header onto the byte stream under the transport.
	faultBadFrame = "badframe"
)

// Sizes of the floods.
const (
	forgedEvents    = 20000
	floodStreams    = 4000
	oversizedLength = 5 << 20
)

type faults struct {
	mode    string
	wire    interface{ Write([]byte) (int, error) }
	started atomic.Bool
	// armed: the next answer on the control port is oversized.
	armed atomic.Bool
	// serve is the transport, for faultStreams.
	lf   transport.ListenerFactory
	ctx  context.Context
	once sync.Once
}

func newFaults(cfg Config) *faults {
	if cfg.Hostile == "" {
		return nil
	}
	log.L.WithField("mode", cfg.Hostile).Warn("HOSTILE TEST AGENT: misbehaving on purpose")
	return &faults{mode: cfg.Hostile, wire: cfg.Wire}
}

func (f *faults) is(mode string) bool { return f != nil && f.mode == mode }

// never blocks for ever: an agent that stops answering.
var never = make(chan struct{})

func (f *faults) interceptor() ttrpc.UnaryServerInterceptor {
	if f == nil {
		return nil
	}
	return func(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (any, error) {
		if f.is(faultMute) || f.is(faultSilent) && f.started.Load() {
			<-never
		}
		start := strings.HasSuffix(info.FullMethod, "/Start")
		if start && f.is(faultPanic) {
			log.G(ctx).Warn("HOSTILE: PID 1 exits")
			os.Exit(3)
		}
		resp, err := method(ctx, unmarshal)
		if err != nil {
			return resp, err
		}
		if start && strings.Contains(info.FullMethod, "containerd.task") {
			f.started.Store(true)
			f.afterStart()
		}
		if f.is(faultReplies) {
			lie(resp)
		}
		if f.is(faultOversized) && strings.HasSuffix(info.FullMethod, "/Pids") {
			f.armed.Store(true)
		}
		return resp, nil
	}
}

// lie rewrites an answer with what belongs to somebody else.
func lie(resp any) {
	switch r := resp.(type) {
	case *taskAPI.StateResponse:
		r.ID, r.ExecID = "victim", "ghost"
		r.Bundle = "../../../../../etc"
		r.Stdin, r.Stdout, r.Stderr = "/etc/shadow", "/etc/shadow", "../../../../../etc/shadow"
		r.Pid = 1
	case *taskAPI.PidsResponse:
		for i := range r.Processes {
			r.Processes[i].Pid = 1
		}
		for pid := uint32(2); pid < 50000; pid++ {
			r.Processes = append(r.Processes, &tasktypes.ProcessInfo{Pid: pid})
		}
	}
}

func (f *faults) afterStart() {
	switch {
	case f.is(faultBadFrame) && f.wire != nil:
		go func() {
			time.Sleep(200 * time.Millisecond) // after the answer
			// A yamux header of an unknown version and a length of 4 GiB.
			bad := []byte{0x7f, 0xff, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff}
			_, _ = f.wire.Write(bad)
		}()
	case f.is(faultStreams) && f.lf != nil:
		d, ok := f.lf.(transport.Dialer)
		if !ok {
			return
		}
		f.once.Do(func() {
			for i := 0; i < floodStreams; i++ {
				go func(port uint32) {
					c, err := d.Dial(f.ctx, port)
					if err == nil {
						<-never
						c.Close()
					}
				}(uint32(1 + i%3))
			}
		})
	}
}

func (f *faults) events(s agentapi.EventsService) agentapi.EventsService {
	if f.is(faultEvents) || f.is(faultSilent) {
		return &hostileEvents{EventsService: s, f: f}
	}
	return s
}

type hostileEvents struct {
	agentapi.EventsService
	f *faults
}

func (h *hostileEvents) Stream(ctx context.Context, r *agentapi.StreamEventsRequest, ss agentapi.Events_StreamServer) error {
	if h.f.is(faultSilent) {
		return h.EventsService.Stream(ctx, r, &silentStream{Events_StreamServer: ss, f: h.f})
	}
	for i := 0; i < forgedEvents; i++ {
		if err := ss.Send(forged(i)); err != nil {
			return err
		}
	}
	return h.EventsService.Stream(ctx, r, ss)
}

// silentStream sends nothing once the agent has gone silent.
type silentStream struct {
	agentapi.Events_StreamServer
	f *faults
}

func (s *silentStream) Send(env *agentapi.Envelope) error {
	if s.f.started.Load() {
		<-never
	}
	return s.Events_StreamServer.Send(env)
}

// forged is the i'th event of the flood.
func forged(i int) *agentapi.Envelope {
	var topic string
	var ev any
	switch i % 6 {
	case 0:
		topic, ev = "/tasks/exit", &eventstypes.TaskExit{ContainerID: "victim", ID: "victim", Pid: 1, ExitStatus: 137, ExitedAt: protobuf.ToTimestamp(time.Now())}
	case 1:
		topic, ev = "/tasks/oom", &eventstypes.TaskOOM{ContainerID: "victim"}
	case 2:
		topic, ev = "/containers/delete", &eventstypes.ContainerDelete{ID: "victim"}
	case 3:
		// A task exit under another topic.
		topic, ev = "/tasks/delete", &eventstypes.TaskExit{ContainerID: "victim", ID: "victim"}
	case 4:
		topic, ev = "/ports", &agentapi.PortEvent{Protocol: "tcp", Port: uint32(1 + i%60000), Listening: true}
	default:
		return &agentapi.Envelope{
			Timestamp: protobuf.ToTimestamp(time.Now()),
			Namespace: "default",
			Topic:     "/tasks/exit",
			Event:     &anypb.Any{TypeUrl: "hostile.example/Unknown", Value: make([]byte, 1024)},
		}
	}
	a, err := typeurl.MarshalAnyToProto(ev)
	if err != nil {
		panic(err)
	}
	return &agentapi.Envelope{Timestamp: protobuf.ToTimestamp(time.Now()), Namespace: "default", Topic: topic, Event: a}
}

func (f *faults) listener(port uint32, l net.Listener) net.Listener {
	if port != agentapi.PortControl || !f.is(faultOversized) {
		return l
	}
	return &oversizedListener{Listener: l, f: f}
}

type oversizedListener struct {
	net.Listener
	f *faults
}

func (l *oversizedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &oversizedConn{Conn: c, f: l.f}, nil
}

// oversizedConn replaces the next response frame, once armed, by one of
// oversizedLength bytes for the same stream.
type oversizedConn struct {
	net.Conn
	f  *faults
	mu sync.Mutex
}

func (c *oversizedConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// A ttrpc header: length, stream id, type (2: response), flags.
	if len(b) < 10 || b[8] != 2 || !c.f.armed.CompareAndSwap(true, false) {
		return c.Conn.Write(b)
	}
	frame := make([]byte, 10+oversizedLength)
	binary.BigEndian.PutUint32(frame, oversizedLength)
	copy(frame[4:8], b[4:8])
	frame[8] = 2
	if _, err := c.Conn.Write(frame); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (f *faults) serving(ctx context.Context, lf transport.ListenerFactory) {
	if f != nil {
		f.ctx, f.lf = ctx, lf
	}
}

// outputEnded sends zeros for as long as the host takes them, in place of
// the end of the stream; the process's exit is reported as usual.
func (f *faults) outputEnded(w net.Conn) bool {
	if !f.is(faultStdio) {
		return false
	}
	go func() {
		zeros := make([]byte, 32<<10)
		for {
			if _, err := w.Write(zeros); err != nil {
				return
			}
		}
	}()
	return true
}
