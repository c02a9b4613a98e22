package vm

import "sync"

// Exit is how a VM ended, for backends to embed: Done is closed once the
// VM has stopped, and Err tells why from then on.
type Exit struct {
	once sync.Once
	done chan struct{}
	err  error // written before done is closed, read after
}

// NewExit returns the Exit of a VM that has not stopped.
func NewExit() *Exit { return &Exit{done: make(chan struct{})} }

// Set records why the VM stopped (nil: a clean power-off or Stop) and
// closes Done. Only the first call counts.
func (e *Exit) Set(err error) {
	e.once.Do(func() {
		e.err = err
		close(e.done)
	})
}

// Done is closed once the VM has stopped, for whatever reason.
func (e *Exit) Done() <-chan struct{} { return e.done }

// Err tells why the VM stopped once Done is closed, and nil before.
func (e *Exit) Err() error {
	select {
	case <-e.done:
		return e.err
	default:
		return nil
	}
}
