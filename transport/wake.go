package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Warm start (DESIGN.md §11) on the serial transport. A template VM's agent
// opens its port, writes IdleMark and blocks reading a Wake before it
// starts its Mux: the host saves the VM while it waits there, so every VM
// restored from the save wakes at the same instruction, with a mux that
// has never carried a byte. The host end of a restored VM writes the Wake
// and then starts its own Mux.
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

// AwaitWake is the guest's side: it writes IdleMark to rw and reads until a
// whole Wake arrived. A read that finds no host connected (end of file on
// a virtio-serial port) is retried after a pause, never taken for a Wake.
func AwaitWake(rw io.ReadWriter) (Wake, error) {
	if _, err := io.WriteString(rw, IdleMark); err != nil {
		return Wake{}, fmt.Errorf("announcing the idle template: %w", err)
	}
	buf := make([]byte, wakeLen)
	for n := 0; n < len(buf); {
		k, err := rw.Read(buf[n:])
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
