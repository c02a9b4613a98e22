package vm

import (
	"errors"
	"testing"
)

func TestExit(t *testing.T) {
	e := NewExit()
	select {
	case <-e.Done():
		t.Fatal("done before Set")
	default:
	}
	if e.Err() != nil {
		t.Fatal("an error before Set")
	}
	first := errors.New("guest panic")
	e.Set(first)
	e.Set(errors.New("later"))
	<-e.Done()
	if e.Err() != first {
		t.Errorf("Err %v, want the first", e.Err())
	}
}
