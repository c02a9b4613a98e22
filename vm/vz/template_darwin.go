//go:build darwin && cgo

package vz

import (
	"context"
	"errors"
	"fmt"

	"github.com/Code-Hex/vz/v3"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// machineIDAttr is the extended attribute of a saved template that holds
// its VM's platform identity (VZGenericMachineIdentifier's data): a VM
// restores only into a VM of the same identity, and the template cache
// keeps one file per template, which an attribute follows through the
// cache's rename.
const machineIDAttr = "com.github.vz-shim.machine-id"

// SaveTemplate boots a VM of cfg in the template layout (NewTemplatePlan),
// waits until its agent is idle, and saves it to dst with its identity
// (DESIGN.md §11). The VM is gone when it returns. Without saved VMs or
// USB mass storage (before macOS 15, Intel Macs) it fails with
// errdefs.ErrNotImplemented.
func SaveTemplate(ctx context.Context, cfg vm.Config, dst string) (retErr error) {
	p, err := NewTemplatePlan(cfg, thisHost())
	if err != nil {
		return err
	}
	id, err := vz.NewGenericMachineIdentifier()
	if err != nil {
		return fmt.Errorf("vz: machine identifier: %w", err)
	}
	m, err := newVZMachine(ctx, p, id)
	if err != nil {
		return err
	}
	defer func() {
		if err := m.Stop(context.WithoutCancel(ctx)); err != nil && retErr == nil {
			retErr = err
		}
	}()
	if err := m.Start(ctx); err != nil {
		return err
	}
	if err := m.saveTemplate(ctx, dst); err != nil {
		return err
	}
	if err := unix.Setxattr(dst, machineIDAttr, id.DataRepresentation(), 0); err != nil {
		return fmt.Errorf("vz: template %s: keeping its machine identifier: %w", dst, err)
	}
	return nil
}

// templateMachineID reads the identity SaveTemplate kept with the template.
func templateMachineID(path string) (*vz.GenericMachineIdentifier, error) {
	if path == "" {
		return nil, nil
	}
	b := make([]byte, 4096)
	n, err := unix.Getxattr(path, machineIDAttr, b)
	if err != nil {
		if errors.Is(err, unix.ENOATTR) {
			return nil, fmt.Errorf("vz: template %s has no machine identifier: %w", path, errdefs.ErrInvalidArgument)
		}
		return nil, fmt.Errorf("vz: template %s: %w", path, err)
	}
	id, err := vz.NewGenericMachineIdentifierWithData(b[:n])
	if err != nil {
		return nil, fmt.Errorf("vz: template %s: machine identifier: %w", path, err)
	}
	return id, nil
}
