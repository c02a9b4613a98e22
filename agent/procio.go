package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/console"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// drainIdle is how long output copying goes on after a process exited while
// nothing arrives. Output that the process wrote is already in the pipe and
// is read at once; the bound is for a child that outlived the process and
// holds the pipe open, which must not delay the exit for ever.
const drainIdle = 250 * time.Millisecond

// procIO joins one process's stdio to its streams. Output is copied straight
// from the process's pipes (or its terminal) to the stream connections.
type procIO struct {
	stdin, stdout, stderr net.Conn

	pipes runc.IO // nil in terminal mode
	tty   console.Console
	ttyF  *os.File // non-blocking duplicate of the terminal, for deadlines

	faults *faults

	mu      sync.Mutex
	outputs []*os.File // what the output copiers read, for drain deadlines
	copying sync.WaitGroup
	exited  atomic.Bool
	closed  bool
}

// newProcIO claims the named streams. In terminal mode the process gets its
// terminal later, from runc's console socket (startTerminal).
func newProcIO(ss *streams, stdinID, stdoutID, stderrID string, terminal bool, uid, gid int) (_ *procIO, retErr error) {
	p := &procIO{faults: ss.faults}
	defer func() {
		if retErr != nil {
			p.close()
		}
	}()
	var err error
	if p.stdin, err = ss.take(stdinID); err != nil {
		return nil, err
	}
	if p.stdout, err = ss.take(stdoutID); err != nil {
		return nil, err
	}
	if p.stderr, err = ss.take(stderrID); err != nil {
		return nil, err
	}
	if terminal {
		if p.stderr != nil {
			return nil, fmt.Errorf("a terminal has no separate stderr stream: %w", errInvalid)
		}
		return p, nil
	}
	if p.stdin == nil && p.stdout == nil && p.stderr == nil {
		// /dev/null: left unset, go-runc would capture runc's output
		// through a pipe that the container inherits and never closes.
		if p.pipes, err = runc.NewNullIO(); err != nil {
			return nil, fmt.Errorf("opening /dev/null: %w", err)
		}
		return p, nil
	}
	// Output pipes exist even without their stream (the output is then
	// discarded): with neither, go-runc would again capture runc's output
	// through a pipe the process inherits.
	p.pipes, err = runc.NewPipeIO(uid, gid, func(o *runc.IOOption) {
		o.OpenStdin = p.stdin != nil
	})
	if err != nil {
		return nil, fmt.Errorf("creating stdio pipes: %w", err)
	}
	return p, nil
}

// runcIO is what go-runc should give the process; nil in terminal mode.
func (p *procIO) runcIO() runc.IO {
	if p.pipes == nil {
		return nil
	}
	return p.pipes
}

// startPipes starts copying once runc has started the process.
func (p *procIO) startPipes(ctx context.Context) {
	if p.pipes == nil {
		return
	}
	// go-runc has closed our copies of the process's ends already
	// (CloseAfterStart), so EOF comes when the process is gone.
	if p.stdin != nil {
		go p.copyIn(ctx, p.pipes.Stdin(), true)
	}
	if r, ok := p.pipes.Stdout().(*os.File); ok {
		p.startOut(ctx, r, p.stdout)
	}
	if r, ok := p.pipes.Stderr().(*os.File); ok {
		p.startOut(ctx, r, p.stderr)
	}
}

// startTerminal starts copying between the streams and the terminal master
// that runc handed over.
func (p *procIO) startTerminal(ctx context.Context, c console.Console) error {
	p.tty = c
	fd, err := unix.Dup(int(c.Fd()))
	if err != nil {
		return fmt.Errorf("duplicating terminal: %w", err)
	}
	unix.CloseOnExec(fd)
	// Non-blocking, so that the runtime poller owns it and read deadlines work.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return fmt.Errorf("terminal: %w", err)
	}
	p.ttyF = os.NewFile(uintptr(fd), "tty")
	if p.stdin != nil {
		go p.copyIn(ctx, p.ttyF, false)
	}
	if p.stdout != nil {
		p.startOut(ctx, p.ttyF, p.stdout)
	}
	return nil
}

func (p *procIO) copyIn(ctx context.Context, w io.WriteCloser, closeAtEOF bool) {
	if _, err := io.Copy(w, p.stdin); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrClosed) {
		log.G(ctx).WithError(err).Debug("copying stdin")
	}
	// The stream's end-of-file comes after all its bytes, so the process
	// sees EOF after the last byte. A terminal stays open: other writers
	// (the process itself) may still use it.
	if closeAtEOF {
		w.Close()
	}
}

// startOut copies r to conn; a nil conn discards.
func (p *procIO) startOut(ctx context.Context, r *os.File, conn net.Conn) {
	p.mu.Lock()
	p.outputs = append(p.outputs, r)
	p.mu.Unlock()
	p.copying.Add(1)
	go func() {
		defer p.copying.Done()
		buf := make([]byte, 32<<10)
		w := conn
		for {
			n, err := r.Read(buf)
			if n > 0 && w != nil {
				if _, werr := w.Write(buf[:n]); werr != nil {
					// Keep reading so the process never blocks on a full
					// pipe because the host went away.
					log.G(ctx).WithError(werr).Warn("stdio stream broken, discarding output")
					w = nil
				}
			}
			if p.exited.Load() {
				_ = r.SetReadDeadline(time.Now().Add(drainIdle))
			}
			if err != nil {
				break
			}
		}
		if w != nil && !p.faults.outputEnded(w) {
			_ = w.(halfCloser).CloseWrite()
		}
	}()
}

// wait returns once the output of an exited process has reached its
// streams. Call processExited first.
func (p *procIO) wait() {
	p.copying.Wait()
}

// processExited bounds the output copying: from now on it stops at EOF or
// after drainIdle without data.
func (p *procIO) processExited() {
	p.exited.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.outputs {
		_ = r.SetReadDeadline(time.Now().Add(drainIdle))
	}
}

// closeStdin ends the process's stdin now (the CloseIO call). The shim
// half-closes the stdin stream instead, which keeps EOF behind the data.
func (p *procIO) closeStdin() {
	if p.stdin != nil {
		p.stdin.Close()
	}
	if p.pipes != nil && p.pipes.Stdin() != nil {
		p.pipes.Stdin().Close()
	}
}

func (p *procIO) resize(ws console.WinSize) error {
	if p.tty == nil {
		return fmt.Errorf("process has no terminal: %w", errPrecondition)
	}
	return p.tty.Resize(ws)
}

// close frees everything; the process is gone or was never started.
func (p *procIO) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	for _, c := range []net.Conn{p.stdin, p.stdout, p.stderr} {
		if c != nil {
			c.Close()
		}
	}
	if p.pipes != nil {
		p.pipes.Close()
	}
	if p.ttyF != nil {
		p.ttyF.Close()
	}
	if p.tty != nil {
		p.tty.Close()
	}
}
