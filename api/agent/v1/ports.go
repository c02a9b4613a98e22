package agentapi

// Ports the agent listens on, over whichever transport the VM has.
const (
	// PortControl carries one ttrpc connection: containerd's task API and
	// the services of this package.
	PortControl uint32 = 1024
	// PortStdio carries one connection per stdio stream (see StreamHeader).
	PortStdio uint32 = 1025
)
