//go:build darwin && cgo && arm64

package vz

// VZ saves and restores VMs on Apple silicon only (macOS 14).

func (v *vzVM) Save(path string) error    { return v.SaveMachineStateToPath(path) }
func (v *vzVM) Restore(path string) error { return v.RestoreMachineStateFromURL(path) }
