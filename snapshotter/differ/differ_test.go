package differ

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vz-shim/containerd-shim-vz/snapshotter"
	"github.com/vz-shim/containerd-shim-vz/snapshotter/ext4"
)

const testNS = "test"

// memProvider serves blobs from memory; it requires the namespace, as
// containerd's content store does.
type memProvider map[digest.Digest][]byte

func (p memProvider) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	if ns, _ := namespaces.Namespace(ctx); ns != testNS {
		return nil, fmt.Errorf("namespace %q: %w", ns, errdefs.ErrFailedPrecondition)
	}
	b, ok := p[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("content %s: %w", desc.Digest, errdefs.ErrNotFound)
	}
	return readerAt{bytes.NewReader(b)}, nil
}

type readerAt struct{ *bytes.Reader }

func (readerAt) Close() error { return nil }

func tarLayer(t *testing.T) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "etc/", Mode: 0o755, Typeflag: tar.TypeDir},
		{Name: "etc/hostname", Mode: 0o644, Size: 5, Typeflag: tar.TypeReg},
		{Name: "etc/.wh.gone", Mode: 0o644, Typeflag: tar.TypeReg},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("hello"))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipped(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type env struct {
	ctx   context.Context
	sn    *snapshotter.Snapshotter
	d     *Differ
	blobs memProvider
}

func newEnv(t *testing.T) *env {
	root := t.TempDir()
	sn, err := snapshotter.New(root, snapshotter.Config{WritableSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	blobs := memProvider{}
	e := &env{ctx: namespaces.WithNamespace(t.Context(), testNS), sn: sn, d: New(root, blobs, ext4.Limits{}), blobs: blobs}
	return e
}

func (e *env) prepare(t *testing.T, key string) (string, []mount.Mount) {
	ms, err := e.sn.Prepare(e.ctx, key, "", snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "x"}))
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(ms[0].Source), ms
}

func (e *env) blob(b []byte, mediaType string) ocispec.Descriptor {
	d := digest.FromBytes(b)
	e.blobs[d] = b
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}
}

func noTemp(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, en := range entries {
		if strings.HasSuffix(en.Name(), ".tmp") || en.Name() == snapshotter.LayerImage {
			t.Errorf("%s left in %s", en.Name(), dir)
		}
	}
}

func TestApplyAndCommit(t *testing.T) {
	e := newEnv(t)
	tarb := tarLayer(t)
	for i, tc := range []struct {
		blob      []byte
		mediaType string
	}{
		{gzipped(t, tarb), ocispec.MediaTypeImageLayerGzip},
		{tarb, "application/vnd.docker.image.rootfs.diff.tar"},
	} {
		key := fmt.Sprintf("extract-%d", i)
		dir, ms := e.prepare(t, key)
		desc := e.blob(tc.blob, tc.mediaType)
		got, err := e.d.Apply(e.ctx, desc, ms)
		if err != nil {
			t.Fatal(err)
		}
		want := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(tarb), Size: int64(len(tarb))}
		if got.Digest != want.Digest || got.Size != want.Size || got.MediaType != want.MediaType {
			t.Fatalf("Apply = %+v, want %+v", got, want)
		}
		if _, err := os.Stat(filepath.Join(dir, snapshotter.LayerImage)); err != nil {
			t.Fatal(err)
		}
		li, err := snapshotter.ReadLayerInfo(dir)
		if err != nil || li.Blob.Digest != desc.Digest || li.DiffID != want.Digest.String() || li.Namespace != testNS || li.Entries != 3 {
			t.Fatalf("layer.json = %+v, %v", li, err)
		}
		if _, err := e.d.Apply(e.ctx, desc, ms); !errdefs.IsAlreadyExists(err) {
			t.Fatalf("second Apply = %v", err)
		}
		name := fmt.Sprintf("layer-%d", i)
		if err := e.sn.Commit(e.ctx, name, key); err != nil {
			t.Fatal(err)
		}
		if u, err := e.sn.Usage(e.ctx, name); err != nil || u.Inodes != 3 || u.Size == 0 {
			t.Fatalf("Usage = %+v, %v", u, err)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 2 {
			t.Fatalf("snapshot dir holds %v, want layer.ext4 and layer.json", entries)
		}
	}
}

func TestApplyCorruptBlob(t *testing.T) {
	e := newEnv(t)
	dir, ms := e.prepare(t, "extract-1")
	good := gzipped(t, tarLayer(t))
	desc := e.blob(good, ocispec.MediaTypeImageLayerGzip)
	bad := gzipped(t, append(tarLayer(t), make([]byte, 512)...))
	e.blobs[desc.Digest] = bad // what the store serves is not what desc names
	desc.Size = int64(len(bad))

	_, err := e.d.Apply(e.ctx, desc, ms)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("Apply of a corrupt blob = %v", err)
	}
	noTemp(t, dir)
	if err := e.sn.Commit(e.ctx, "layer", "extract-1"); !errdefs.IsNotImplemented(err) {
		t.Fatalf("Commit after failed apply = %v", err)
	}
}

func TestApplyCancelled(t *testing.T) {
	e := newEnv(t)
	dir, ms := e.prepare(t, "extract-1")
	desc := e.blob(tarLayer(t), ocispec.MediaTypeImageLayer)
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	if _, err := e.d.Apply(ctx, desc, ms); err == nil {
		t.Fatal("Apply with a cancelled context succeeded")
	}
	noTemp(t, dir)
}

func TestApplyErrors(t *testing.T) {
	e := newEnv(t)
	dir, ms := e.prepare(t, "extract-1")
	desc := e.blob(tarLayer(t), ocispec.MediaTypeImageLayer)

	unknown := desc
	unknown.MediaType = "application/vnd.example.layer"
	if _, err := e.d.Apply(e.ctx, unknown, ms); !errdefs.IsInvalidArgument(err) {
		t.Errorf("unknown media type: %v", err)
	}
	badDigest := desc
	badDigest.Digest = "md5:abc"
	if _, err := e.d.Apply(e.ctx, badDigest, ms); !errdefs.IsInvalidArgument(err) {
		t.Errorf("bad digest: %v", err)
	}
	missing := e.blob([]byte("x"), ocispec.MediaTypeImageLayer)
	delete(e.blobs, missing.Digest)
	if _, err := e.d.Apply(e.ctx, missing, ms); !errdefs.IsNotFound(err) {
		t.Errorf("missing blob: %v", err)
	}
	noTemp(t, dir)

	root := filepath.Dir(filepath.Dir(dir))
	foreign := [][]mount.Mount{
		nil,
		{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/a:/b"}}},
		{{Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}},
		{{Type: "ext4", Source: "/var/lib/other/snapshots/1/rw.ext4", Options: []string{"rw", "loop"}}},
		{{Type: "ext4", Source: filepath.Join(root, "snapshots", "1", "layer.ext4"), Options: []string{"ro", "loop"}}},
		{{Type: "ext4", Source: ms[0].Source, Options: []string{"ro", "loop"}}},
		{{Type: "erofs", Source: ms[0].Source, Options: []string{"rw"}}},
	}
	for _, m := range foreign {
		if _, err := e.d.Apply(e.ctx, desc, m); !errdefs.IsNotImplemented(err) {
			t.Errorf("Apply on %+v = %v, want NotImplemented", m, err)
		}
	}
	if err := e.sn.Remove(e.ctx, "extract-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.Apply(e.ctx, desc, ms); !errdefs.IsNotFound(err) {
		t.Errorf("Apply to a removed snapshot: %v", err)
	}
}

func TestCompare(t *testing.T) {
	d := New(t.TempDir(), memProvider{}, ext4.Limits{})
	_, err := d.Compare(t.Context(), nil, nil)
	if !errdefs.IsNotImplemented(err) || errors.Unwrap(err) == nil {
		t.Fatalf("Compare = %v", err)
	}
}
