package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/containerd/v2/plugins/services/content/contentserver"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"

	"github.com/vz-shim/containerd-shim-vz/snapshotter"
)

// fakeContainerd serves a real local content store over containerd's
// content API. Reads require the namespace, as containerd's do, and can be
// slowed down.
type fakeContainerd struct {
	content.Store
	mu       sync.Mutex
	slow     bool
	reading  chan struct{}
	readOnce sync.Once
}

func (f *fakeContainerd) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	if _, err := namespaces.NamespaceRequired(ctx); err != nil {
		return nil, err
	}
	ra, err := f.Store.ReaderAt(ctx, desc)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.slow {
		f.readOnce.Do(func() { close(f.reading) })
		return slowReaderAt{ra}, nil
	}
	return ra, nil
}

type slowReaderAt struct{ content.ReaderAt }

func (s slowReaderAt) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(20 * time.Millisecond)
	if len(p) > 512 {
		p = p[:512]
	}
	return s.ReaderAt.ReadAt(p, off)
}

func startFakeContainerd(t *testing.T, sock string) *fakeContainerd {
	cs, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeContainerd{Store: cs, reading: make(chan struct{})}
	srv := grpc.NewServer()
	contentapi.RegisterContentServer(srv, contentserver.New(f))
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return f
}

func layerBlob(t *testing.T, files, size int) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for i := range files {
		data := bytes.Repeat([]byte{byte(i)}, size)
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("f%d", i), Mode: 0o644, Size: int64(size), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	return buf.Bytes()
}

func TestDaemonApply(t *testing.T) {
	dir := t.TempDir()
	root, sock, csock := filepath.Join(dir, "root"), filepath.Join(dir, "vz.sock"), filepath.Join(dir, "containerd.sock")
	f := startFakeContainerd(t, csock)
	cmd := startDaemonWith(t, root, sock, csock)

	ctx := namespaces.WithNamespace(t.Context(), "test")
	small := layerBlob(t, 3, 100)
	big := layerBlob(t, 64, 64<<10) // read slowly: long enough to be interrupted
	var descs []ocispec.Descriptor
	for _, b := range [][]byte{small, big} {
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(b), Size: int64(len(b))}
		if err := content.WriteBlob(ctx, f, desc.Digest.String(), bytes.NewReader(b), desc); err != nil {
			t.Fatal(err)
		}
		descs = append(descs, desc)
	}

	sn, applier := dialDaemon(t, sock)

	ms, err := sn.Prepare(ctx, "extract-1 l1", "", snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "l1"}))
	if err != nil {
		t.Fatal(err)
	}
	applied, err := applier.Apply(ctx, descs[0], ms)
	if err != nil {
		t.Fatal(err)
	}
	if applied.MediaType != ocispec.MediaTypeImageLayer || applied.Size <= 0 {
		t.Fatalf("Apply = %+v", applied)
	}
	if err := sn.Commit(ctx, "l1", "extract-1 l1"); err != nil {
		t.Fatal(err)
	}
	if u, err := sn.Usage(ctx, "l1"); err != nil || u.Inodes != 3 {
		t.Fatalf("Usage = %+v, %v", u, err)
	}

	// SIGTERM in the middle of an apply: it is cancelled, nothing is left.
	ms, err = sn.Prepare(ctx, "extract-2 l2", "l1", snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "l2"}))
	if err != nil {
		t.Fatal(err)
	}
	sdir, err := snapshotter.SnapshotDirFromMounts(root, ms)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.slow = true
	f.mu.Unlock()
	applyErr := make(chan error, 1)
	go func() {
		_, err := applier.Apply(ctx, descs[1], ms)
		applyErr <- err
	}()
	select {
	case <-f.reading:
	case err := <-applyErr:
		t.Fatalf("Apply returned before reading: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitExit(t, cmd)
	if err := <-applyErr; err == nil {
		t.Fatal("interrupted Apply succeeded")
	} else {
		t.Logf("interrupted Apply: %v", err)
	}
	entries, _ := os.ReadDir(sdir)
	for _, e := range entries {
		if e.Name() == snapshotter.LayerImage || strings.HasSuffix(e.Name(), ".tmp") {
			t.Errorf("interrupted apply left %s", e.Name())
		}
	}
}
