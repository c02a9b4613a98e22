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

// defaultWarmStart: off on macOS until VZ's warm start (vm/vz
// TemplatePlan) has run on a Mac: it is built and type-checked, and its
// lifecycle tested against a fake of VZ, but whether VZ restores a saved
// VM into a configuration with other shares, another NIC address and
// another console file is VZ's to say. warm_start = true turns it on; a
// restore VZ refuses boots the task cold and removes the template.
const defaultWarmStart = false
