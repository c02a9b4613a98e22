package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Warm start (DESIGN.md §11) on the serial transport. A template VM's agent
// opens its port, writes IdleMark and blocks reading a Wake (WakeConn)
// before its Mux reads or writes a byte: the host saves the VM while it
// waits there, so every VM restored from the save wakes at the same
// instruction, with a mux that has never carried a byte. The host end of a
// restored VM writes the Wake and then starts its own Mux.
//
// The Wake carries what must differ between two VMs restored from one
// template and cannot wait for the first ttrpc call: seed bytes for the
// guest's random number generator and the host's clock.
const IdleMark = "vz-template-idle\n"

const (
	wakeMagic = "vz-wake1"
	// WakeSeedLen is how many seed bytes a Wake carries.
	WakeSeedLen = 64
	wakeLen     = len(wakeMagic) + WakeSeedLen + 8
)

// Wake is the host's message to a restored template.
type Wake struct {
	Seed [WakeSeedLen]byte
	Time time.Time
}

// MarshalBinary encodes w: magic, seed, host time in Unix nanoseconds.
func (w Wake) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, wakeLen)
	b = append(b, wakeMagic...)
	b = append(b, w.Seed[:]...)
	return binary.BigEndian.AppendUint64(b, uint64(w.Time.UnixNano())), nil
}

// readWake reads one Wake, and not a byte more. A read that finds no host
// connected (end of file on a virtio-serial port) is retried after a
// pause, never taken for a Wake.
func readWake(r io.Reader) (Wake, error) {
	buf := make([]byte, wakeLen)
	for n := 0; n < len(buf); {
		k, err := r.Read(buf[n:])
		n += k
		if errors.Is(err, io.EOF) && k == 0 {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return Wake{}, fmt.Errorf("waiting to be woken: %w", err)
		}
	}
	return parseWake(buf)
}

func parseWake(b []byte) (Wake, error) {
	if len(b) != wakeLen || !bytes.Equal(b[:len(wakeMagic)], []byte(wakeMagic)) {
		return Wake{}, fmt.Errorf("not a wake message: %q", b[:min(len(b), len(wakeMagic))])
	}
	var w Wake
	copy(w.Seed[:], b[len(wakeMagic):])
	w.Time = time.Unix(0, int64(binary.BigEndian.Uint64(b[len(wakeMagic)+WakeSeedLen:])))
	return w, nil
}

// AwaitIdle is the host's side while a template boots: it reads r until
// IdleMark, which must be the first bytes the guest writes.
func AwaitIdle(r io.Reader) error {
	buf := make([]byte, len(IdleMark))
	if _, err := io.ReadFull(r, buf); err != nil {
		return fmt.Errorf("waiting for the template's agent to be idle: %w", err)
	}
	if string(buf) != IdleMark {
		return fmt.Errorf("the template's agent wrote %q, not its idle mark", buf)
	}
	return nil
}

// WakeConn is the guest's end of the agent port in a template VM. Its
// first Read waits for the Wake and hands it to onWake, and every Write
// waits until then; Idle writes IdleMark. So the agent sets itself up
// whole, its Mux and listeners too, and then says it is idle: a restored
// VM runs only what comes after the Wake. The Mux's keepalive pings wait
// with the Writes, and never go to the host that saved the template.
type WakeConn struct {
	rwc    io.ReadWriteCloser
	onWake func(Wake) error

	once   sync.Once
	woken  chan struct{}
	closed chan struct{}
	err    error // set before woken is closed
}

// NewWakeConn wraps rwc.
func NewWakeConn(rwc io.ReadWriteCloser, onWake func(Wake) error) *WakeConn {
	return &WakeConn{rwc: rwc, onWake: onWake, woken: make(chan struct{}), closed: make(chan struct{})}
}

// Idle writes IdleMark: the host saves the VM from here on.
func (c *WakeConn) Idle() error {
	if _, err := io.WriteString(c.rwc, IdleMark); err != nil {
		return fmt.Errorf("announcing the idle template: %w", err)
	}
	return nil
}

// Read waits for the Wake first (once), then reads the port.
func (c *WakeConn) Read(p []byte) (int, error) {
	c.once.Do(func() {
		defer close(c.woken)
		w, err := readWake(c.rwc)
		if err == nil && c.onWake != nil {
			err = c.onWake(w)
		}
		c.err = err
	})
	if c.err != nil {
		return 0, c.err
	}
	return c.rwc.Read(p)
}

// Write waits until the Wake was read.
func (c *WakeConn) Write(p []byte) (int, error) {
	select {
	case <-c.woken:
	case <-c.closed:
		return 0, net.ErrClosed
	}
	if c.err != nil {
		return 0, c.err
	}
	return c.rwc.Write(p)
}

// Close closes the port, which ends a Read waiting for the Wake.
func (c *WakeConn) Close() error {
	select {
	case <-c.closed:
	default:
		close(c.closed)
	}
	return c.rwc.Close()
}
