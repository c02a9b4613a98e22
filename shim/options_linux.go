package shim

const defaultBackend = "qemu"

// defaultNetwork gives every VM an address of its own on a CNI network.
const defaultNetwork = networkCNI

var networkModes = []string{networkCNI, networkUser, networkNone}

// defaultAccel is tcg: a /dev/kvm that opens is no proof that KVM runs the
// guest (on some hosts a paravirtual KVM hangs real guests), and a wrong
// guess fails every task. accel = "kvm" in the runtime options or the
// system-wide file turns it on.
func defaultAccel(arch string) string { return "tcg" }

// defaultForwardPorts: forward_ports when the options do not say.
const defaultForwardPorts = false

// defaultWarmStart: a task VM starts from a saved template VM when the
// options do not say (a task the template cannot serve boots).
const defaultWarmStart = true
