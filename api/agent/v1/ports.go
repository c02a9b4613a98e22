package agentapi

// Ports the agent listens on, over whichever transport the VM has.
const (
	// PortControl carries one ttrpc connection: containerd's task API and
	// the services of this package.
	PortControl uint32 = 1024
	// PortStdio carries one connection per stdio stream (see StreamHeader).
	PortStdio uint32 = 1025
	// PortForward carries one connection per forwarded TCP connection or
	// UDP peer: a header line "tcp PORT\n" or "udp PORT\n", then the
	// bytes (TCP) or datagrams each behind a 2-byte big-endian length (UDP).
	PortForward uint32 = 1026
	// PortWake is a template VM's on a transport that does not survive a
	// save (vsock, VZ): the host learns there that the agent is idle, and
	// wakes a restored VM (transport.WakeGate).
	PortWake uint32 = 1027
)

// PortEventTopic is the event topic of PortEvent on the agent's event
// stream; the shim acts on it and does not pass it on to containerd.
const PortEventTopic = "/vz/ports"
