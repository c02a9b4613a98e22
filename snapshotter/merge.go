package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// ensureMerged returns the merged image of chain (committed snapshot ids,
// topmost first), building it if needed. It is cached as
// merged/<chain[0]>.ext4: the chain below a committed snapshot never
// changes, so its topmost id names it.
func (s *Snapshotter) ensureMerged(ctx context.Context, chain []string) (string, error) {
	s.mergeMu.Lock()
	defer s.mergeMu.Unlock()

	dst := s.mergedPath(chain[0])
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	if s.cfg.Content == nil {
		return "", fmt.Errorf("cannot merge %d layers below snapshot %s: no content store configured: %w",
			len(chain), chain[0], errdefs.ErrFailedPrecondition)
	}
	// Layers are read back from their blobs, bottom first.
	layers := make([]func() (io.ReadCloser, error), 0, len(chain))
	for i := len(chain) - 1; i >= 0; i-- {
		id := chain[i]
		li, err := ReadLayerInfo(s.dir(id))
		if err != nil {
			return "", fmt.Errorf("cannot merge layer of snapshot %s: %w", id, err)
		}
		layers = append(layers, s.blobOpener(ctx, id, li))
	}

	log.G(ctx).WithField("layers", len(chain)).WithField("top", chain[0]).Info("merging layers")
	tmp := dst + tmpSuffix
	os.Remove(tmp)
	if _, err := s.merge(ctx, layers, tmp, s.cfg.Limits); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("failed to merge %d layers below snapshot %s: %w", len(chain), chain[0], err)
	}
	if err := SyncPath(tmp); err != nil {
		os.Remove(tmp)
		return "", err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return dst, nil
}

// blobOpener returns a function opening the uncompressed layer tar of
// snapshot id from containerd's content store, in the namespace the layer
// was applied in.
func (s *Snapshotter) blobOpener(ctx context.Context, id string, li LayerInfo) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) {
		if li.Namespace != "" {
			ctx = namespaces.WithNamespace(ctx, li.Namespace)
		} else if ns, ok := namespaces.Namespace(ctx); ok {
			// Incoming gRPC metadata is not forwarded by itself.
			ctx = namespaces.WithNamespace(ctx, ns)
		}
		ra, err := s.cfg.Content.ReaderAt(ctx, li.Blob)
		if err != nil {
			if errdefs.IsNotFound(err) {
				return nil, fmt.Errorf("layer blob %s of snapshot %s is gone from containerd's content store (namespace %q); pull the image again to merge its layers: %w",
					li.Blob.Digest, id, li.Namespace, err)
			}
			return nil, fmt.Errorf("failed to open layer blob %s of snapshot %s: %w", li.Blob.Digest, id, err)
		}
		rc, err := s.decompress(content.NewReader(ra))
		if err != nil {
			ra.Close()
			return nil, fmt.Errorf("failed to decompress layer blob %s of snapshot %s: %w", li.Blob.Digest, id, err)
		}
		return &closeBoth{ReadCloser: rc, under: ra}, nil
	}
}

type closeBoth struct {
	io.ReadCloser
	under io.Closer
}

func (c *closeBoth) Close() error {
	return errors.Join(c.ReadCloser.Close(), c.under.Close())
}
