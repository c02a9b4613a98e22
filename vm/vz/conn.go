package vz

import (
	"fmt"
	"net"
	"reflect"
	"unsafe"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/transport"
)

type closeWriter interface {
	CloseWrite() error
}

// halfCloseConn adds CloseWrite to a connection that lacks it.
type halfCloseConn struct {
	net.Conn
	cw closeWriter
}

func (c *halfCloseConn) CloseWrite() error { return c.cw.CloseWrite() }

// withCloseWrite makes c a transport.Conn. vz's VirtioSocketConnection
// (v3.7.1) has no CloseWrite, but it is a thin shell over an unexported
// rawConn field: the net.FileConn of the socket VZ hands out, whose
// CloseWrite is shutdown(SHUT_WR). The stdio streams need that half-close
// (stdin's end-of-file travels in band, DESIGN.md §4), so we reach the
// field by reflection; go.mod pins vz at v3.7.1 exactly, and a vz that
// renames the field fails here, at the first Dial, with a clear error
// rather than with a stdin that never ends.
func withCloseWrite(c net.Conn) (transport.Conn, error) {
	if tc, ok := c.(transport.Conn); ok {
		return tc, nil
	}
	raw := rawConn(c)
	if cw, ok := raw.(closeWriter); ok {
		return &halfCloseConn{Conn: c, cw: cw}, nil
	}
	return nil, fmt.Errorf("vz: %T offers no half-close (CloseWrite): %w", c, errdefs.ErrNotImplemented)
}

// rawConn returns the net.Conn in c's unexported rawConn field, or nil.
func rawConn(c net.Conn) net.Conn {
	v := reflect.ValueOf(c)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil
	}
	f := v.Elem().FieldByName("rawConn")
	if !f.IsValid() || f.Type() != reflect.TypeFor[net.Conn]() {
		return nil
	}
	// The field is unexported: read it through its address (c is a
	// pointer, so the field is addressable).
	raw, _ := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(net.Conn)
	return raw
}
