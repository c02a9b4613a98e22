package snapshotter

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const testNS = "test"

func testContext(t *testing.T) context.Context {
	return namespaces.WithNamespace(t.Context(), testNS)
}

// memProvider is a content.Provider over blobs in memory, per namespace.
type memProvider struct {
	mu    sync.Mutex
	blobs map[string][]byte // namespace/digest
}

func newMemProvider() *memProvider { return &memProvider{blobs: map[string][]byte{}} }

func (p *memProvider) add(ns string, b []byte) ocispec.Descriptor {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := digest.FromBytes(b)
	p.blobs[ns+"/"+d.String()] = b
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: d, Size: int64(len(b))}
}

func (p *memProvider) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	b, ok := p.blobs[ns+"/"+desc.Digest.String()]
	if !ok {
		return nil, fmt.Errorf("content %s: %w", desc.Digest, errdefs.ErrNotFound)
	}
	return readerAt{bytes.NewReader(b)}, nil
}

type readerAt struct{ *bytes.Reader }

func (readerAt) Close() error { return nil }

// fakeWritable stands in for ext4.CreateWritable: a sparse file.
func fakeWritable(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func passthrough(r io.Reader) (io.ReadCloser, error) { return io.NopCloser(r), nil }

func newTestSnapshotter(t *testing.T, cfg Config) *Snapshotter {
	t.Helper()
	sn, err := New(t.TempDir(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	sn.createWritable = fakeWritable
	sn.decompress = passthrough
	return sn
}

// commitLayer does what containerd's unpacker and our differ do for one
// layer: Prepare an extraction snapshot, write layer.ext4 and layer.json
// into it, Commit it as name. It returns the committed snapshot's id.
func commitLayer(t *testing.T, ctx context.Context, sn *Snapshotter, p *memProvider, name, parent string) string {
	t.Helper()
	key := "extract-1 " + name
	mounts, err := sn.Prepare(ctx, key, parent, snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: name}))
	if err != nil {
		t.Fatal(err)
	}
	dir, err := SnapshotDirFromMounts(sn.root, mounts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, WritableImage)); !os.IsNotExist(err) {
		t.Fatalf("extraction snapshot got a writable image (stat: %v)", err)
	}
	var desc ocispec.Descriptor
	if p != nil {
		desc = p.add(testNS, []byte("tar of "+name))
	}
	if err := os.WriteFile(filepath.Join(dir, LayerImage), []byte("image of "+name), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteLayerInfo(dir, LayerInfo{Blob: desc, Namespace: testNS, Entries: 3}); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, name, key, snapshots.WithLabels(map[string]string{"containerd.io/gc.root": "x"})); err != nil {
		t.Fatal(err)
	}
	return filepath.Base(dir)
}

// chain commits n layers l1 (bottom) .. ln and returns their ids, bottom first.
func chain(t *testing.T, ctx context.Context, sn *Snapshotter, p *memProvider, n int) []string {
	var ids []string
	parent := ""
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("l%d", i)
		ids = append(ids, commitLayer(t, ctx, sn, p, name, parent))
		parent = name
	}
	return ids
}
