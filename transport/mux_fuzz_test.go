package transport

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// frame is one yamux frame: version 0, type, flags, stream id, length, body.
func frame(typ byte, flags uint16, id, length uint32, body []byte) []byte {
	b := make([]byte, 12, 12+len(body))
	b[1] = typ
	binary.BigEndian.PutUint16(b[2:4], flags)
	binary.BigEndian.PutUint32(b[4:8], id)
	binary.BigEndian.PutUint32(b[8:12], length)
	return append(b, body...)
}

// FuzzMuxWire: whatever bytes a guest writes on the agent port, the host's
// mux does not crash, ends when the port does, and keeps bounded state.
func FuzzMuxWire(f *testing.F) {
	hdr := []byte{muxMagic, muxVersion, 0, 0, 4, 0}
	var open []byte
	open = append(open, frame(1, 0x1, 2, 0, nil)...)             // window update + SYN: stream 2
	open = append(open, frame(0, 0, 2, 6, hdr)...)               // its header: port 1024
	open = append(open, frame(0, 0x4, 2, 5, []byte("hello"))...) // data + FIN
	f.Add(open)
	f.Add(frame(0, 0x4, 7, 0, nil))                                  // FIN of a stream that never was
	f.Add(frame(0, 0, 2, 1<<31, nil))                                // a body that never comes
	f.Add(frame(2, 0x1, 0, 42, nil))                                 // ping
	f.Add(frame(3, 0, 0, 0, nil))                                    // go away
	f.Add(append([]byte{1}, make([]byte, 11)...))                    // a bad version
	f.Add(frame(1, 0x1, 4, 1<<30, nil))                              // a huge window
	f.Add(append(frame(0, 0x1, 6, 3, []byte{muxMagic, 9, 9}), 0, 0)) // bad stream header
	f.Fuzz(func(t *testing.T, data []byte) {
		host, guest := net.Pipe()
		m, err := NewMux(context.Background(), host, false, WithoutKeepAlive())
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		ln, err := m.Listen(1024)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					buf := make([]byte, 64)
					for {
						if _, err := c.Read(buf); err != nil {
							c.Close()
							return
						}
					}
				}()
			}
		}()
		// Answers the host writes go nowhere but must not block it.
		go func() {
			buf := make([]byte, 4096)
			for {
				if _, err := guest.Read(buf); err != nil {
					return
				}
			}
		}()
		guest.SetWriteDeadline(time.Now().Add(5 * time.Second))
		guest.Write(data)
		guest.Close()
		select {
		case <-m.sess.CloseChan():
		case <-time.After(10 * time.Second):
			t.Fatal("the host's mux outlived its port")
		}
		if n := m.fins.len(); n > maxEarlyFins+m.sess.NumStreams() {
			t.Fatalf("%d FINs kept", n)
		}
	})
}
