//go:build darwin && cgo && amd64

package vz

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// VZ saves and restores VMs on Apple silicon only; NewTemplatePlan refuses
// templates on Intel Macs before these are reached.

func (v *vzVM) Save(path string) error {
	return fmt.Errorf("vz: saving a VM needs Apple silicon: %w", errdefs.ErrNotImplemented)
}

func (v *vzVM) Restore(path string) error {
	return fmt.Errorf("vz: restoring a VM needs Apple silicon: %w", errdefs.ErrNotImplemented)
}
