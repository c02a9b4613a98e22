package main

import (
	"context"
	"errors"
	"net"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/diff"
	diffproxy "github.com/containerd/containerd/v2/core/diff/proxy"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	snproxy "github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vz-shim/containerd-shim-vz/snapshotter"
)

// The test binary doubles as the daemon, so that the smoke test can signal
// a real process.
func TestMain(m *testing.M) {
	if os.Getenv("VZ_SNAPSHOTTER_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func startDaemon(t *testing.T, root, sock string) *osexec.Cmd {
	return startDaemonWith(t, root, sock, filepath.Join(t.TempDir(), "containerd.sock"))
}

// startDaemonWith starts the daemon and waits until it serves.
func startDaemonWith(t *testing.T, root, sock, containerdSock string) *osexec.Cmd {
	t.Helper()
	cmd := osexec.Command(os.Args[0], "--root", root, "--address", sock,
		"--containerd-address", containerdSock, "--writable-size", "64MiB", "--log-level", "debug")
	cmd.Env = append(os.Environ(), "VZ_SNAPSHOTTER_TEST_MAIN=1")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return cmd
		}
		if i == 100 {
			t.Fatal("daemon did not start serving")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDaemonSmoke(t *testing.T) {
	dir := t.TempDir()
	root, sock := filepath.Join(dir, "root"), filepath.Join(dir, "run", "vz.sock")
	// A stale socket from a crashed run is replaced.
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()

	cmd := startDaemon(t, root, sock)
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", fi, err)
	}

	sn, applier := dialDaemon(t, sock)
	ctx := namespaces.WithNamespace(t.Context(), "test")

	// What the unpacker does, with the differ's output written by hand:
	// the smoke test has no containerd to read a blob from.
	ms, err := sn.Prepare(ctx, "extract-1 l1", "", snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "l1"}))
	if err != nil {
		t.Fatal(err)
	}
	sdir, err := snapshotter.SnapshotDirFromMounts(root, ms)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sdir, snapshotter.LayerImage), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "l1", "extract-1 l1"); err != nil {
		t.Fatal(err)
	}
	if info, err := sn.Stat(ctx, "l1"); err != nil || info.Kind != snapshots.KindCommitted {
		t.Fatalf("Stat = %+v, %v", info, err)
	}
	vms, err := sn.View(ctx, "v", "l1")
	if err != nil || len(vms) != 1 || vms[0].Type != "ext4" {
		t.Fatalf("View = %+v, %v", vms, err)
	}
	if err := sn.Remove(ctx, "l1"); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("Remove of a parent over the wire = %v", err)
	}
	for _, key := range []string{"v", "l1"} {
		if err := sn.Remove(ctx, key); err != nil {
			t.Fatal(err)
		}
	}

	// Foreign mounts fall through to containerd's next differ.
	_, err = applier.Apply(ctx, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000"},
		[]mount.Mount{{Type: "overlay", Source: "overlay"}})
	if !errdefs.IsNotImplemented(err) {
		t.Fatalf("Apply on foreign mounts over the wire = %v", err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitExit(t, cmd)
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	filepath.Walk(root, func(p string, _ os.FileInfo, _ error) error {
		if strings.HasSuffix(p, ".tmp") {
			t.Errorf("temp file left: %s", p)
		}
		return nil
	})
}

func TestRunRefusesLiveSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "vz.sock")
	startDaemon(t, filepath.Join(dir, "root"), sock)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err := run(ctx, config{root: filepath.Join(dir, "root2"), address: sock, containerdAddress: filepath.Join(dir, "c.sock"), maxLayers: 16})
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second daemon on the same socket: %v", err)
	}
}

// waitExit waits for the daemon to exit after a signal; it must exit 0.
func waitExit(t *testing.T, cmd *osexec.Cmd) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("daemon exited: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not exit on SIGTERM")
	}
}

// dialDaemon connects to the daemon at sock the way containerd's proxy
// plugins do; the connection closes with the test.
func dialDaemon(t *testing.T, sock string) (snapshots.Snapshotter, diff.Applier) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return snproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "vz"),
		diffproxy.NewDiffApplier(diffapi.NewDiffClient(conn)).(diff.Applier)
}
