package transport

// Vsock is the AF_VSOCK transport. The guest agent listens on its own CID;
// the host dials the guest at CID. On Linux it uses github.com/mdlayher/vsock;
// elsewhere Dial and Listen fail with errdefs.ErrNotImplemented (the macOS
// host side goes through Virtualization.framework instead).
//
// Like unix sockets, a vsock connection reads io.EOF both after the peer's
// CloseWrite and after the peer process exits; the death of the whole VM
// reads as ECONNRESET.
type Vsock struct {
	// CID is the context ID Dial connects to. Listen ignores it.
	CID uint32
}

var (
	_ Dialer          = Vsock{}
	_ ListenerFactory = Vsock{}
)
