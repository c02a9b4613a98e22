package shim

const defaultBackend = "vz"

// defaultAccel is meaningless for VZ, which always uses the hypervisor.
func defaultAccel(string) string { return "" }

// defaultNetwork is VZ's NAT: already an address of the VM's own, reachable
// from the Mac.
const defaultNetwork = networkUser

// No network namespaces or CNI on macOS.
var networkModes = []string{networkUser, networkNone}

// defaultForwardPorts: forward_ports when the options do not say.
const defaultForwardPorts = true

// defaultWarmStart: VZ has no warm start yet (saveTemplate).
const defaultWarmStart = false
