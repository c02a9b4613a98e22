// Command vz-agent is the guest's /init: it sets up the micro-VM and serves
// the shim's task, stdio and event calls. Started by hand (not as PID 1) it
// runs in host mode on an ordinary Linux machine, listening on 0600 unix
// sockets; the tests drive it that way.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/vz-shim/containerd-shim-vz/agent"
	"github.com/vz-shim/containerd-shim-vz/agent/sysinit"
	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/transport"
)

func main() {
	if os.Getpid() == 1 {
		if err := runInit(); err != nil {
			sysinit.Fatal(err)
		}
		return
	}
	if err := runHost(); err != nil {
		fmt.Fprintf(os.Stderr, "vz-agent: %v\n", err)
		os.Exit(1)
	}
}

// runHost is host mode: an ordinary process, unix sockets in a directory.
func runHost() error {
	var (
		listen = flag.String("listen", "", "directory for the agent's unix sockets (one per port, mode 0600)")
		state  = flag.String("state", "", "state directory (bundles, runc state)")
		runcB  = flag.String("runc", "runc", "runc binary")
		debug  = flag.Bool("debug", false, "debug logging")
	)
	flag.Parse()
	if *listen == "" || *state == "" {
		return errors.New("host mode needs -listen and -state")
	}
	if *debug {
		_ = log.SetLevel("debug")
	}
	// Containers' processes are re-parented to us once runc exits, so
	// that their exits reach the reaper.
	if err := reaper.SetSubreaper(1); err != nil {
		return fmt.Errorf("becoming a subreaper: %w", err)
	}
	return serve(agent.Config{StateDir: *state, Runc: *runcB}, transport.Unix{Dir: *listen}, nil)
}

// runInit is the VM's PID 1.
func runInit() error {
	// Any of these steps may re-exec /init (switch root), so they come
	// before anything that starts goroutines of our own.
	if err := sysinit.SwitchRoot(); err != nil {
		return fmt.Errorf("leaving the initramfs: %w", err)
	}
	boot := agent.NewBootTrace(sysinit.Uptime)
	boot.MarkAt("init", sysinit.InitUptime())
	os.Setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
	if err := sysinit.MountBase("/"); err != nil {
		return err
	}
	cmdline, err := sysinit.ReadCmdline()
	if err != nil {
		return err
	}
	if v, ok := cmdline.Get("vz.debug"); ok && v != "0" {
		_ = log.SetLevel("debug")
	}
	ctx := context.Background()
	modules, err := sysinit.ModulesDir()
	if err != nil {
		return err
	}
	if _, err := sysinit.LoadModules(ctx, modules, cmdline); err != nil {
		// The step that needs a missing driver fails with a clearer
		// message (no transport device, no disk); the console has this.
		log.G(ctx).WithError(err).Error("loading kernel modules")
	}
	boot.Mark("modules")
	if err := sysinit.LinkUp("lo"); err != nil {
		return err
	}
	// Before serving, so that no container starts without its network.
	// vz.net=static: the shim sends the addresses in Setup instead.
	if mode, _ := cmdline.Get("vz.net"); mode != "static" {
		if _, err := agent.ConfigureNetwork(ctx, agent.NetworkDir); err != nil {
			log.G(ctx).WithError(err).Error("NETWORK NOT CONFIGURED: containers run without network")
		}
		boot.Mark("network")
	}
	cfg := agent.Config{StateDir: "/run/vz-agent", Init: true, Boot: boot}
	// Honoured only by the hostile test build (go build -tags hostile).
	cfg.Hostile, _ = cmdline.Get("vz.hostile")
	lf, idle, closeT, err := guestTransport(ctx, cmdline, &cfg)
	if err != nil {
		return err
	}
	defer closeT()
	if idle != nil {
		cfg.Serving = func() {
			if err := idle(); err != nil {
				log.G(ctx).WithError(err).Error("template: not saved")
			}
		}
	}
	err = serve(cfg, lf, func(ctx context.Context) {
		sysinit.Shutdown(ctx, false)
	})
	if err != nil {
		return err
	}
	return sysinit.Shutdown(ctx, false)
}

// guestTransport picks the transport named on the kernel command line:
// vz.transport=vsock, or vz.transport=serial with vz.port=<virtio port name>
// (a yamux multiplexer over the virtio-serial port). With vz.template=1 the
// agent waits to be woken (DESIGN.md §11): idle says when it may be saved.
// The serial port becomes cfg.Wire.
func guestTransport(ctx context.Context, cmdline sysinit.Cmdline, cfg *agent.Config) (lf transport.ListenerFactory, idle func() error, closeT func(), err error) {
	template := false
	if v, _ := cmdline.Get("vz.template"); v == "1" {
		template = true
	}
	onWake := func(w transport.Wake) error { return wake(ctx, w) }
	kind, _ := cmdline.Get("vz.transport")
	switch kind {
	case "", "vsock":
		if !template {
			return transport.Vsock{}, nil, func() {}, nil
		}
		// No connection survives a save: the wake comes on a port of
		// its own, and the others wait for it.
		ln, err := transport.Vsock{}.Listen(agentapi.PortWake)
		if err != nil {
			return nil, nil, nil, err
		}
		g := transport.NewWakeGate(ln, onWake)
		return g.Factory(transport.Vsock{}), func() error { g.Idle(); return nil }, func() { ln.Close() }, nil
	case "serial":
		name, ok := cmdline.Get("vz.port")
		if !ok {
			name = "agent"
		}
		dev, err := findVirtioPort(name)
		if err != nil {
			return nil, nil, nil, err
		}
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("opening %s: %w", dev, err)
		}
		var port io.ReadWriteCloser = f
		cfg.Wire = f
		if template {
			wc := transport.NewWakeConn(f, onWake)
			port, idle = wc, wc.Idle
		}
		m, err := transport.NewMux(ctx, port, true)
		if err != nil {
			f.Close()
			return nil, nil, nil, err
		}
		return m, idle, func() { m.Close() }, nil
	}
	return nil, nil, nil, fmt.Errorf("unknown vz.transport %q", kind)
}

// wake runs when a template VM was restored (transport.WakeConn): this
// guest is one of many restored from the same save, and it takes the
// host's seed bytes and clock before any request reaches the agent.
func wake(ctx context.Context, w transport.Wake) error {
	if err := sysinit.Reseed(w.Seed[:]); err != nil {
		return err
	}
	if err := sysinit.SetTime(w.Time); err != nil {
		return err
	}
	log.G(ctx).Debug("restored from a template")
	return nil
}

// findVirtioPort maps a virtio-serial port name to its device: there is no
// udev in the guest to make /dev/virtio-ports links.
func findVirtioPort(name string) (string, error) {
	matches, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Join("/dev", filepath.Base(filepath.Dir(m))), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %q", name)
}

// serve runs the agent until a signal or the shim's Shutdown. onSignal, if
// set, is what SIGTERM does after the containers are stopped (power off).
func serve(cfg agent.Config, lf transport.ListenerFactory, onSignal func(context.Context)) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// go-runc must wait for runc through the reaper, which owns every
	// child's exit status (we reap orphans too).
	runc.Monitor = reaper.Default
	sigc := make(chan os.Signal, 128)
	signal.Notify(sigc, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT)
	cfg.Shutdown = cancel
	a, err := agent.New(ctx, cfg)
	if err != nil {
		return err
	}
	go func() {
		for s := range sigc {
			switch s {
			case unix.SIGCHLD:
				if err := reaper.Reap(); err != nil {
					log.G(ctx).WithError(err).Debug("reaping")
				}
			default:
				// Not in this goroutine: stopping waits for exits, which
				// need SIGCHLD handled here.
				log.G(ctx).WithField("signal", s).Info("stopping")
				go func() {
					a.StopContainers(ctx)
					if onSignal != nil {
						onSignal(ctx)
					}
					cancel()
				}()
			}
		}
	}()
	err = a.Serve(ctx, lf)
	a.StopContainers(context.Background())
	return err
}
