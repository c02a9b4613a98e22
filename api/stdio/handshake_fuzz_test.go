package stdio

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzReadHeader: a header from the peer either names a stream that a
// header written for that name reads back the same, or fails; it never
// allocates beyond maxFrame.
func FuzzReadHeader(f *testing.F) {
	var b bytes.Buffer
	WriteHeader(&b, "stdout-1")
	f.Add(b.Bytes())
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		id, err := ReadHeader(bytes.NewReader(data))
		if err != nil {
			return
		}
		if id == "" {
			t.Fatal("an empty stream id was accepted")
		}
		var w bytes.Buffer
		if err := WriteHeader(&w, id); err != nil {
			t.Fatal(err)
		}
		back, err := ReadHeader(&w)
		if err != nil || back != id {
			t.Fatalf("round trip of %q: %q, %v", id, back, err)
		}
	})
}

// FuzzReadAck: an answer is an acceptance, a rejection that says so, or an
// error; never a panic.
func FuzzReadAck(f *testing.F) {
	var ok, no bytes.Buffer
	WriteAck(&ok, nil)
	WriteAck(&no, errors.New("no such stream"))
	f.Add(ok.Bytes())
	f.Add(no.Bytes())
	f.Add([]byte{0, 0, 0x10, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		err := ReadAck(bytes.NewReader(data))
		if err != nil && errors.Is(err, ErrRejected) && len(data) <= 4 {
			t.Fatalf("a rejection from %d bytes", len(data))
		}
	})
}
