// Package stdio is the handshake that opens a stdio stream between the shim
// and the agent (DESIGN §4). Both sides import it; it holds no state.
package stdio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

// maxFrame bounds a handshake frame so that a confused peer cannot make the
// other side allocate without limit.
const maxFrame = 4096

// ErrRejected is wrapped by ReadAck when the agent refused the stream.
var ErrRejected = errors.New("stdio stream rejected")

// WriteHeader sends the header that names a new stream.
func WriteHeader(w io.Writer, id string) error {
	return writeFrame(w, &agentapi.StreamHeader{Id: id})
}

// ReadHeader reads the header that names a new stream.
func ReadHeader(r io.Reader) (string, error) {
	var h agentapi.StreamHeader
	if err := readFrame(r, &h); err != nil {
		return "", err
	}
	if h.Id == "" {
		return "", fmt.Errorf("stdio header without a stream id")
	}
	return h.Id, nil
}

// WriteAck answers a header; a nil cause accepts the stream.
func WriteAck(w io.Writer, cause error) error {
	ack := &agentapi.StreamAck{}
	if cause != nil {
		ack.Error = cause.Error()
	}
	return writeFrame(w, ack)
}

// ReadAck waits for the agent's answer to a header.
func ReadAck(r io.Reader) error {
	var ack agentapi.StreamAck
	if err := readFrame(r, &ack); err != nil {
		return err
	}
	if ack.Error != "" {
		return fmt.Errorf("%w: %s", ErrRejected, ack.Error)
	}
	return nil
}

func writeFrame(w io.Writer, m proto.Message) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	_, err = w.Write(buf)
	return err
}

func readFrame(r io.Reader, m proto.Message) error {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return fmt.Errorf("reading stdio frame: %w", err)
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > maxFrame {
		return fmt.Errorf("stdio frame of %d bytes exceeds %d", size, maxFrame)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("reading stdio frame: %w", err)
	}
	return proto.Unmarshal(b, m)
}
