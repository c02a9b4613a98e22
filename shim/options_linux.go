package shim

import (
	"runtime"

	"golang.org/x/sys/unix"
)

const defaultBackend = "qemu"

// defaultAccel is kvm when the guest matches the host and /dev/kvm opens,
// else tcg. Hosts with a KVM that cannot run the guest kernel must say
// accel = "tcg" in the runtime options.
func defaultAccel(arch string) string {
	if arch == runtime.GOARCH {
		if fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
			unix.Close(fd)
			return "kvm"
		}
	}
	return "tcg"
}
