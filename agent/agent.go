// Package agent is the guest side of containerd-shim-vz: it serves
// containerd's task API over runc, the stdio streams and the events of
// DESIGN §4. It runs as the VM's /init, or as an ordinary process on a Linux
// host (host mode) for tests.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"github.com/containerd/errdefs/pkg/errgrpc"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/transport"
)

// Version is the agent's version, set at link time.
var Version = "dev"

// Config is what the agent needs to know of where it runs.
type Config struct {
	// StateDir holds bundles and runc's state.
	StateDir string
	// Runc is the runc binary; "runc" looks it up in PATH.
	Runc string
	// Init is true when the agent is the VM's PID 1.
	Init bool
	// Shutdown is called when the shim asks the agent to end (Shutdown
	// with no container left).
	Shutdown func()
	// Boot, when not nil, is the guest's boot trace: Serve marks "serving"
	// in it and Info reports it.
	Boot *BootTrace
	// Serving, when not nil, is called once Serve listens on every port:
	// a template VM's agent says there that it is idle (transport.WakeConn).
	Serving func()
	// Hostile names the misbehaviour of the hostile test build (go build
	// -tags hostile, the kernel's vz.hostile=); a release agent ignores it.
	Hostile string
	// Wire is the byte stream under the transport, if there is one (the
	// serial port): the hostile build writes bad frames on it.
	Wire io.Writer
}

// Agent serves one guest.
type Agent struct {
	cfg     Config
	events  *eventQueue
	streams *streams
	tasks   *taskService
	ports   *portWatch
	faults  *faults
}

// New makes an agent. The caller owns the process-wide reaper: it must set
// go-runc's Monitor to reaper.Default and call reaper.Reap on SIGCHLD (see
// cmd/vz-agent), or no exit is ever seen.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("agent needs a state directory: %w", errInvalid)
	}
	if cfg.Runc == "" {
		cfg.Runc = "runc"
	}
	q := newEventQueue()
	ss := newStreams()
	ss.faults = newFaults(cfg)
	a := &Agent{
		cfg:     cfg,
		faults:  ss.faults,
		events:  q,
		streams: ss,
		ports:   newPortWatch("/proc/net", q),
		tasks: &taskService{
			runcBinary: cfg.Runc,
			runcRoot:   filepath.Join(cfg.StateDir, "runc"),
			events:     q,
			streams:    ss,
			shutdown:   cfg.Shutdown,
			boot:       cfg.Boot,
			containers: make(map[string]*container),
			byPid:      make(map[int]*process),
			early:      make(map[int]runc.Exit),
		},
	}
	exits := reaper.Default.Subscribe()
	go func() {
		<-ctx.Done()
		reaper.Default.Unsubscribe(exits)
	}()
	go a.tasks.handleExits(ctx, exits)
	return a, nil
}

// Serve listens on the control and stdio ports until ctx ends.
func (a *Agent) Serve(ctx context.Context, lf transport.ListenerFactory) error {
	control, err := lf.Listen(agentapi.PortControl)
	if err != nil {
		return fmt.Errorf("listening on control port: %w", err)
	}
	control = a.faults.listener(agentapi.PortControl, control)
	stdioL, err := lf.Listen(agentapi.PortStdio)
	if err != nil {
		control.Close()
		return fmt.Errorf("listening on stdio port: %w", err)
	}
	forwardL, err := lf.Listen(agentapi.PortForward)
	if err != nil {
		control.Close()
		stdioL.Close()
		return fmt.Errorf("listening on forward port: %w", err)
	}
	interceptors := []ttrpc.UnaryServerInterceptor{errorInterceptor}
	if i := a.faults.interceptor(); i != nil {
		interceptors = append(interceptors, i)
	}
	srv, err := ttrpc.NewServer(ttrpc.WithChainUnaryServerInterceptor(interceptors...))
	if err != nil {
		control.Close()
		stdioL.Close()
		forwardL.Close()
		return err
	}
	taskAPI.RegisterTTRPCTaskService(srv, a.tasks)
	agentapi.RegisterSystemService(srv, &systemService{init: a.cfg.Init, ports: a.ports, boot: a.cfg.Boot, ctx: ctx})
	agentapi.RegisterBundleService(srv, &bundleService{dir: filepath.Join(a.cfg.StateDir, "bundles"), tasks: a.tasks})
	agentapi.RegisterEventsService(srv, a.faults.events(&eventService{q: a.events}))

	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ctx, control); err != nil && !errors.Is(err, ttrpc.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			errc <- fmt.Errorf("serving control port: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := a.streams.serve(ctx, stdioL); err != nil {
			errc <- err
		}
	}()
	go func() {
		defer wg.Done()
		if err := a.ports.serveForward(ctx, forwardL); err != nil {
			errc <- err
		}
	}()
	a.faults.serving(ctx, lf)
	a.cfg.Boot.Mark("serving")
	log.G(ctx).Info("agent serving")
	if a.cfg.Serving != nil {
		a.cfg.Serving()
	}
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	srv.Close()
	stdioL.Close()
	forwardL.Close()
	wg.Wait()
	a.streams.closeAll()
	return err
}

// StopContainers kills and deletes every container (guest shutdown).
func (a *Agent) StopContainers(ctx context.Context) {
	a.tasks.stopAll(ctx)
}

// errorInterceptor turns errdefs classes into the ttrpc status codes that
// containerd's clients map back (errgrpc), as the runc shim does.
func errorInterceptor(ctx context.Context, unmarshal ttrpc.Unmarshaler, _ *ttrpc.UnaryServerInfo, method ttrpc.Method) (any, error) {
	resp, err := method(ctx, unmarshal)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return resp, nil
}
