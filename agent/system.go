package agent

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/vz-shim/containerd-shim-vz/agent/sysinit"
	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

// systemService configures the guest. Outside a VM (host mode) it refuses
// to touch the machine: the hostname and clock belong to the host.
type systemService struct {
	init  bool
	ports *portWatch
	boot  *BootTrace
	// ctx is the agent's: what Setup starts lives as long as the agent.
	ctx context.Context
}

var _ agentapi.SystemService = (*systemService)(nil)

func (s *systemService) Info(ctx context.Context, _ *agentapi.InfoRequest) (*agentapi.InfoResponse, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return nil, err
	}
	return &agentapi.InfoResponse{
		Version:       Version,
		KernelRelease: unix.ByteSliceToString(u.Release[:]),
		Pid:           uint32(os.Getpid()),
		Init:          s.init,
		Boot:          s.boot.Phases(),
		Uptime:        durationpb.New(sysinit.Uptime()),
	}, nil
}

func (s *systemService) Setup(ctx context.Context, r *agentapi.SetupRequest) (*emptypb.Empty, error) {
	if !s.init {
		return nil, fmt.Errorf("not the guest's init, leaving the host's hostname and clock alone: %w", errdefs.ErrFailedPrecondition)
	}
	if r.Hostname != "" {
		if err := sysinit.SetHostname(r.Hostname); err != nil {
			return nil, err
		}
		if err := SetNetworkHostname(r.Hostname); err != nil {
			return nil, err
		}
	}
	if r.Time != nil {
		if err := sysinit.SetTime(protobuf.FromTimestamp(r.Time)); err != nil {
			return nil, err
		}
	}
	if r.Network != nil {
		if err := ConfigureStatic(ctx, NetworkDir, r.Network); err != nil {
			return nil, fmt.Errorf("network: %w", err)
		}
	}
	if r.Dhcp != nil {
		// As at boot: the containers run without network rather than not.
		if err := ConfigureDHCP(ctx, NetworkDir, r.Dhcp); err != nil {
			if errdefs.IsInvalidArgument(err) {
				return nil, fmt.Errorf("network: %w", err)
			}
			log.G(ctx).WithError(err).Error("network: dhcp failed; the VM has no network")
		}
	}
	if err := SetSysctls(r.Sysctls); err != nil {
		return nil, err
	}
	if r.ForwardPorts {
		s.ports.start(s.ctx)
	}
	// Shares before any container: their bind mounts come from SharesDir.
	if err := mountShares(SharesDir, r.Shares); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (s *systemService) SetTime(ctx context.Context, r *agentapi.SetTimeRequest) (*emptypb.Empty, error) {
	if !s.init {
		return nil, fmt.Errorf("not the guest's init, leaving the host's clock alone: %w", errdefs.ErrFailedPrecondition)
	}
	if r.Time == nil {
		return nil, fmt.Errorf("no time given: %w", errdefs.ErrInvalidArgument)
	}
	if err := sysinit.SetTime(protobuf.FromTimestamp(r.Time)); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}
