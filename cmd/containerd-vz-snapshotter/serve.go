package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/diffservice"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	contentproxy "github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/log"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vz-shim/containerd-shim-vz/snapshotter"
	"github.com/vz-shim/containerd-shim-vz/snapshotter/differ"
	"github.com/vz-shim/containerd-shim-vz/snapshotter/ext4"
)

type config struct {
	root              string
	address           string
	containerdAddress string
	writableSize      int64
	maxLayers         int
}

// run serves until ctx is done, then cancels in-flight calls, waits for
// them to return (a cancelled apply removes its temporary image and commits
// nothing) and closes the metadata store.
func run(ctx context.Context, cfg config) error {
	// grpc.NewClient connects lazily: containerd may start after us.
	conn, err := grpc.NewClient("unix://"+cfg.containerdAddress,
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("containerd address %s: %w", cfg.containerdAddress, err)
	}
	defer conn.Close()
	store := contentproxy.NewContentStore(contentapi.NewContentClient(conn))

	sn, err := snapshotter.New(cfg.root, snapshotter.Config{
		WritableSize: cfg.writableSize,
		MaxLayers:    cfg.maxLayers,
		Content:      store,
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := sn.Close(); err != nil {
			log.G(ctx).WithError(err).Error("failed to close metadata store")
		}
	}()
	df := differ.New(cfg.root, store, ext4.DefaultLimits())

	srv := grpc.NewServer(
		grpc.WaitForHandlers(true),
		grpc.ChainUnaryInterceptor(cancelWith(ctx)),
	)
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	diffapi.RegisterDiffServer(srv, diffservice.FromApplierAndComparer(df, df))

	l, err := listen(cfg.address)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.address)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	log.G(ctx).WithField("address", cfg.address).WithField("root", cfg.root).Info("serving vz snapshotter and differ")

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.G(ctx).Info("shutting down")
	srv.Stop() // handlers were cancelled by cancelWith; Stop waits for them
	<-errc
	return nil
}

// cancelWith cancels every call's context when ctx is done, so that a
// shutdown does not wait for a long layer conversion to finish.
func cancelWith(ctx context.Context) grpc.UnaryServerInterceptor {
	return func(rctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		rctx, cancel := context.WithCancel(rctx)
		defer cancel()
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
		return handler(rctx, req)
	}
}

// listen listens on a unix socket at path, replacing a stale socket left by
// a previous run but refusing to steal one that is being served.
func listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("failed to remove stale socket: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
