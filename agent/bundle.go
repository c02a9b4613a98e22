package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"google.golang.org/protobuf/types/known/emptypb"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

// bundleService keeps OCI bundles under one directory of the agent's state.
type bundleService struct {
	dir   string
	tasks *taskService
}

var _ agentapi.BundleService = (*bundleService)(nil)

func (s *bundleService) Create(ctx context.Context, r *agentapi.CreateBundleRequest) (_ *agentapi.CreateBundleResponse, retErr error) {
	if err := identifiers.Validate(r.Id); err != nil {
		return nil, err
	}
	dir := filepath.Join(s.dir, r.Id)
	if err := os.MkdirAll(s.dir, 0o711); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o711); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("bundle %q: %w", r.Id, errdefs.ErrAlreadyExists)
		}
		return nil, err
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(dir)
		}
	}()
	for _, f := range r.Files {
		// The shim is trusted, but a path that leaves the bundle is a bug
		// that must not write anywhere else in the guest.
		if !filepath.IsLocal(f.Path) {
			return nil, fmt.Errorf("bundle file %q is not inside the bundle: %w", f.Path, errdefs.ErrInvalidArgument)
		}
		p := filepath.Join(dir, f.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o711); err != nil {
			return nil, err
		}
		mode := os.FileMode(f.Mode).Perm()
		if mode == 0 {
			mode = 0o644
		}
		if err := os.WriteFile(p, f.Data, mode); err != nil {
			return nil, fmt.Errorf("writing bundle file: %w", err)
		}
	}
	return &agentapi.CreateBundleResponse{Bundle: dir}, nil
}

func (s *bundleService) Remove(ctx context.Context, r *agentapi.RemoveBundleRequest) (*emptypb.Empty, error) {
	if err := identifiers.Validate(r.Id); err != nil {
		return nil, err
	}
	dir := filepath.Join(s.dir, r.Id)
	if _, err := s.tasks.get(r.Id); err == nil {
		return nil, fmt.Errorf("bundle %q is in use by a container: %w", r.Id, errdefs.ErrFailedPrecondition)
	}
	// Never delete through a mount: that would delete the container's files.
	mounted, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, err
	}
	if len(mounted) > 0 {
		return nil, fmt.Errorf("bundle %q still has %s mounted: %w", r.Id, mounted[0].Mountpoint, errdefs.ErrFailedPrecondition)
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}
