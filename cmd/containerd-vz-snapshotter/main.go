// Command containerd-vz-snapshotter serves the vz snapshotter and differ to
// containerd as proxy plugins on one gRPC socket:
//
//	[proxy_plugins.vz]
//	  type = "snapshot"
//	  address = "/run/containerd-vz-snapshotter/snapshotter.sock"
//	[proxy_plugins.vz-diff]
//	  type = "diff"
//	  address = "/run/containerd-vz-snapshotter/snapshotter.sock"
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/log"

	"github.com/vz-shim/containerd-shim-vz/snapshotter"
)

func main() {
	var (
		cfg          config
		writableSize string
		logLevel     string
	)
	flag.StringVar(&cfg.root, "root", "/var/lib/containerd-vz-snapshotter", "directory for snapshots and metadata")
	flag.StringVar(&cfg.address, "address", "/run/containerd-vz-snapshotter/snapshotter.sock", "unix socket to serve the snapshots and diff APIs on")
	flag.StringVar(&cfg.containerdAddress, "containerd-address", "/run/containerd/containerd.sock", "containerd's gRPC socket (layer blobs are read from its content store)")
	flag.StringVar(&writableSize, "writable-size", "10GiB", "apparent size of each container's sparse writable image, in bytes or with a unit")
	flag.IntVar(&cfg.maxLayers, "max-layers", snapshotter.DefaultMaxLayers, "most read-only layer images in one mount list; lower layers of longer chains are merged")
	flag.StringVar(&logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	flag.Parse()

	if err := log.SetLevel(logLevel); err != nil {
		fmt.Fprintln(os.Stderr, "containerd-vz-snapshotter:", err)
		os.Exit(2)
	}
	var err error
	if cfg.writableSize, err = snapshotter.ParseSize(writableSize); err != nil || cfg.writableSize <= 0 {
		fmt.Fprintf(os.Stderr, "containerd-vz-snapshotter: --writable-size %q: want a positive size\n", writableSize)
		os.Exit(2)
	}
	if cfg.maxLayers < 1 {
		fmt.Fprintln(os.Stderr, "containerd-vz-snapshotter: --max-layers must be at least 1")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		// After the first signal, a second one kills at once.
		<-ctx.Done()
		stop()
	}()
	if err := run(ctx, cfg); err != nil {
		log.G(ctx).WithError(err).Error("containerd-vz-snapshotter failed")
		os.Exit(1)
	}
}
