package shim

const defaultBackend = "vz"

// defaultAccel is meaningless for VZ, which always uses the hypervisor.
func defaultAccel(string) string { return "" }
