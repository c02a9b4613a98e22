//go:build darwin && cgo

package vz

import (
	"context"
	"fmt"
	"net"

	"github.com/Code-Hex/vz/v3"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// New checks cfg, builds and validates its VZ configuration, and returns a
// machine that is not started yet. ctx carries the logger the machine keeps
// using.
func New(ctx context.Context, cfg vm.Config) (vm.Machine, error) {
	p, err := NewPlan(cfg, thisHost())
	if err != nil {
		return nil, err
	}
	var id *vz.GenericMachineIdentifier
	if p.Template != nil {
		if id, err = templateMachineID(p.Template.Restore); err != nil {
			return nil, err
		}
	}
	return newVZMachine(ctx, p, id)
}

// newVZMachine creates the VM of p, not started yet.
func newVZMachine(ctx context.Context, p Plan, id *vz.GenericMachineIdentifier) (*Machine, error) {
	c, err := configure(p, id)
	if err != nil {
		return nil, err
	}
	v, err := vz.NewVirtualMachine(c)
	if err != nil {
		return nil, fmt.Errorf("vz: vm %s: %w", p.ID, err)
	}
	// vz buffers every state change since NewVirtualMachine; this
	// translates them. It ends with the shim (one VM per shim): vz never
	// closes its channel.
	states := make(chan State, 1)
	go func() {
		for s := range v.StateChangedNotify() {
			states <- state(s)
		}
	}()
	return fromPlan(ctx, p, &vzVM{VirtualMachine: v, states: states}, usbController{v}), nil
}

// usbController adapts the VM's one XHCI controller to usbBus.
type usbController struct{ v *vz.VirtualMachine }

// Attach plugs a USB mass storage device over d's image.
func (u usbController) Attach(d DiskPlan) (func() error, error) {
	ctrls := u.v.USBControllers()
	if len(ctrls) == 0 {
		return nil, fmt.Errorf("the vm has no USB controller")
	}
	att, err := vz.NewDiskImageStorageDeviceAttachmentWithCacheAndSync(d.Path, d.ReadOnly, cachingMode(d.Caching), syncMode(d.Sync))
	if err != nil {
		return nil, fmt.Errorf("disk image %s: %w", d.Path, err)
	}
	conf, err := vz.NewUSBMassStorageDeviceConfiguration(att)
	if err != nil {
		return nil, fmt.Errorf("USB mass storage configuration: %w", err)
	}
	dev, err := vz.NewUSBMassStorageDevice(conf)
	if err != nil {
		return nil, fmt.Errorf("USB mass storage device: %w", err)
	}
	if err := ctrls[0].Attach(dev); err != nil {
		return nil, err
	}
	return func() error { return ctrls[0].Detach(dev) }, nil
}

// vzVM adapts vz.VirtualMachine to hypervisor.
type vzVM struct {
	*vz.VirtualMachine
	states chan State
}

func (v *vzVM) Start() error         { return v.VirtualMachine.Start() }
func (v *vzVM) State() State         { return state(v.VirtualMachine.State()) }
func (v *vzVM) States() <-chan State { return v.states }

// Connect goes through the VM's one socket device.
func (v *vzVM) Connect(port uint32) (net.Conn, error) {
	devs := v.SocketDevices()
	if len(devs) == 0 {
		return nil, fmt.Errorf("vz: the vm has no socket device")
	}
	c, err := devs[0].Connect(port)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func state(s vz.VirtualMachineState) State {
	switch s {
	case vz.VirtualMachineStateStopped:
		return StateStopped
	case vz.VirtualMachineStateRunning:
		return StateRunning
	case vz.VirtualMachineStatePaused:
		return StatePaused
	case vz.VirtualMachineStateError:
		return StateError
	default:
		return StateOther
	}
}
