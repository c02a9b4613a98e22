package shim

import (
	"slices"
	"testing"

	"github.com/containerd/errdefs"
)

// TestKernelArgs: the USB module group (and usb-storage's immediate scan) for grouped VMs whose
// joining containers bring USB disks; the options' groups; the options' own arguments last.
func TestKernelArgs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    Options
		grouped bool
		want    []string
	}{
		{"plain", Options{Backend: "qemu", KernelArgs: []string{"loglevel=7"}}, false, []string{"loglevel=7"}},
		{"qemu group", Options{Backend: "qemu"}, true, nil},
		{"qemu group usb", Options{Backend: "qemu", DiskHotplug: "usb"}, true, []string{"usb_storage.delay_use=0", "vz.modules=usb"}},
		{"vz group", Options{Backend: "vz", KernelArgs: []string{"x=1"}}, true, []string{"usb_storage.delay_use=0", "vz.modules=usb", "x=1"}},
		{"vz alone", Options{Backend: "vz"}, false, nil},
		{"modules", Options{Backend: "qemu", GuestModules: []string{"bridge"}, DiskHotplug: "usb"}, true, []string{"usb_storage.delay_use=0", "vz.modules=bridge,usb"}},
	} {
		if got := kernelArgs(tc.opts, tc.grouped); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestGuestModulesOption(t *testing.T) {
	for body, ok := range map[string]bool{
		`guest_modules = ["bridge"]`:   true,
		`guest_modules = ["a,b"]`:      false,
		`guest_modules = [""]`:         false,
		`disk_hotplug = "usb"`:         true,
		`disk_hotplug = "firewire"`:    false,
		`guest_modules = ["usb", "x"]`: true,
	} {
		o := Options{Kernel: "/k", Initrd: "/i"}
		err := parseOptions([]byte(body), &o)
		if err == nil {
			err = o.setDefaults()
		}
		if ok && err != nil || !ok && !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v", body, err)
		}
	}
}
