package shim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	"github.com/containerd/log"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/api/stdio"
	"github.com/vz-shim/containerd-shim-vz/transport"
)

// stdinCloseGrace is how long CloseIO lets the stdin copy drain what the
// FIFO still holds before it cuts stdin off.
const stdinCloseGrace = 2 * time.Second

// hostIO joins a process's containerd-side stdio (FIFOs, file:// or
// binary:// URIs) to its streams into the guest.
type hostIO struct {
	ids [3]string // stream ids for the agent: stdin, stdout, stderr

	stdinConn transport.Conn
	stdinPath string        // the FIFO, opened by startStdin
	stdinF    io.ReadCloser // nil until then
	// stdinClosed: CloseIO came (before startStdin, it is done there).
	stdinClosed bool
	// stdinW is the shim's own write end of the stdin FIFO, held until
	// CloseIO as containerd's runc shim does: a client that closes its
	// writer and opens a new one later (detach, re-attach) reaches the
	// same process; only CloseIO lets the FIFO reach its end.
	stdinW    io.Closer
	stdinDone chan struct{}

	copying sync.WaitGroup // stdout and stderr copies
	mu      sync.Mutex
	closers []io.Closer
	logger  *exec.Cmd // binary:// logging process
}

// openIO opens the host ends and the streams. Streams are opened (and
// acknowledged by the agent) before the process exists, so nothing it
// writes can be lost.
//
// onOutput, when not nil, is called once, when the first bytes of output
// (stdout or stderr) have been written to the host's side.
func openIO(ctx context.Context, d transport.Dialer, id, ns, stdin, stdout, stderr string, terminal bool, onOutput func()) (_ *hostIO, retErr error) {
	h := &hostIO{stdinDone: make(chan struct{})}
	defer func() {
		if retErr != nil {
			h.close()
		}
	}()
	if terminal {
		// A terminal has one output; containerd gives no stderr for it.
		stderr = ""
	}
	outs, err := openOutputs(ctx, id, ns, stdout, stderr)
	if err != nil {
		return nil, err
	}
	h.logger = outs.logger
	for _, w := range []io.WriteCloser{outs.stdout, outs.stderr} {
		if w != nil {
			h.closers = append(h.closers, w)
		}
	}

	if stdin != "" {
		h.stdinPath = stdin
		if h.ids[0], h.stdinConn, err = openStream(ctx, d); err != nil {
			return nil, err
		}
		h.closers = append(h.closers, h.stdinConn)
	} else {
		close(h.stdinDone)
	}
	var first sync.Once
	for i, w := range []io.WriteCloser{outs.stdout, outs.stderr} {
		if w == nil {
			continue
		}
		if onOutput != nil {
			w = &notifyWriter{WriteCloser: w, once: &first, fn: onOutput}
		}
		sid, conn, err := openStream(ctx, d)
		if err != nil {
			return nil, err
		}
		h.ids[i+1] = sid
		h.closers = append(h.closers, conn)
		h.copying.Add(1)
		go func() {
			defer h.copying.Done()
			if _, err := io.Copy(w, conn); err != nil && !errors.Is(err, net.ErrClosed) {
				log.G(ctx).WithError(err).Warn("copying output from the guest")
			}
			w.Close()
		}()
	}
	return h, nil
}

// startStdin opens the stdin FIFO, the shim's own write end too, and
// copies it to the guest. As in containerd's runc shim, an init process's
// stdin opens at Create and an exec's at Start: ctr sets up its CloseIO
// only once Exec returned, so a short stdin read at Exec would end before
// anyone could close it. Once is enough; without stdin it does nothing.
func (h *hostIO) startStdin(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stdinPath == "" || h.stdinF != nil {
		return nil
	}
	f, err := fifo.OpenFifo(ctx, h.stdinPath, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("opening stdin %s: %w", h.stdinPath, err)
	}
	w, err := fifo.OpenFifo(ctx, h.stdinPath, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		f.Close()
		return fmt.Errorf("opening stdin %s: %w", h.stdinPath, err)
	}
	h.stdinF, h.stdinW = f, w
	h.closers = append(h.closers, f, w)
	if h.stdinClosed {
		w.Close() // CloseIO came first
	}
	go func() {
		defer close(h.stdinDone)
		if _, err := io.Copy(h.stdinConn, f); err != nil && !errors.Is(err, os.ErrClosed) {
			log.G(ctx).WithError(err).Debug("copying stdin to the guest")
		}
		// In band, after the last byte: the agent closes the process's
		// stdin when it reads this.
		_ = h.stdinConn.CloseWrite()
	}()
	return nil
}

// openStream dials the agent's stdio port and names a new stream.
func openStream(ctx context.Context, d transport.Dialer) (string, transport.Conn, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", nil, err
	}
	id := hex.EncodeToString(b[:])
	conn, err := d.Dial(ctx, agentapi.PortStdio)
	if err != nil {
		return "", nil, fmt.Errorf("opening a stdio stream: %w", err)
	}
	err = stdio.WriteHeader(conn, id)
	if err == nil {
		err = stdio.ReadAck(conn)
	}
	if err != nil {
		conn.Close()
		return "", nil, fmt.Errorf("stdio handshake: %w", err)
	}
	return id, conn, nil
}

type outputs struct {
	stdout, stderr io.WriteCloser
	logger         *exec.Cmd
}

// openOutputs opens stdout and stderr as containerd names them: a FIFO
// path, file:///path, or binary:///path?args (a logging binary).
func openOutputs(ctx context.Context, id, ns, stdout, stderr string) (outputs, error) {
	var o outputs
	if stdout == "" && stderr == "" {
		return o, nil
	}
	u, err := url.Parse(stdout)
	if err != nil || stdout == "" {
		u = &url.URL{}
	}
	switch u.Scheme {
	case "binary", "binary-v2":
		return startLogger(ctx, u, id, ns, stderr != "")
	case "file":
		f, err := os.OpenFile(u.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return o, fmt.Errorf("opening log file: %w", err)
		}
		// Both streams write the same file; it closes after both.
		shared := &sharedCloser{f: f}
		o.stdout = shared.open()
		if stderr != "" {
			o.stderr = shared.open()
		}
		return o, nil
	}
	for _, p := range []struct {
		path string
		dst  *io.WriteCloser
	}{{stdout, &o.stdout}, {stderr, &o.stderr}} {
		if p.path == "" {
			continue
		}
		f, err := fifo.OpenFifo(ctx, p.path, syscall.O_WRONLY, 0)
		if err != nil {
			for _, w := range []io.WriteCloser{o.stdout, o.stderr} {
				if w != nil {
					w.Close()
				}
			}
			return o, fmt.Errorf("opening %s: %w", p.path, err)
		}
		*p.dst = f
	}
	return o, nil
}

// startLogger runs a logging binary with containerd's protocol: the output
// pipes as fds 3 and 4, and fd 5 closed (binary) or written (binary-v2)
// when it is ready.
func startLogger(ctx context.Context, u *url.URL, id, ns string, withStderr bool) (outputs, error) {
	var o outputs
	outR, outW, err := os.Pipe()
	if err != nil {
		return o, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return o, err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		for _, f := range []*os.File{outR, outW, errR, errW} {
			f.Close()
		}
		return o, err
	}
	var args []string
	for k, vs := range u.Query() {
		args = append(args, k)
		if len(vs) > 0 {
			args = append(args, vs[0])
		}
	}
	cmd := exec.Command(u.Path, args...)
	cmd.Env = []string{"CONTAINER_ID=" + id, "CONTAINER_NAMESPACE=" + ns}
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	err = cmd.Start()
	outR.Close()
	errR.Close()
	readyW.Close()
	if err != nil {
		readyR.Close()
		outW.Close()
		errW.Close()
		return o, fmt.Errorf("starting logging binary %s: %w", u.Path, err)
	}
	b := make([]byte, 1)
	n, err := readyR.Read(b)
	readyR.Close()
	if (err != nil && err != io.EOF) || (u.Scheme == "binary-v2" && n == 0) {
		cmd.Process.Kill()
		cmd.Wait()
		outW.Close()
		errW.Close()
		return o, fmt.Errorf("logging binary %s did not become ready: %v: %w", u.Path, err, errdefs.ErrUnavailable)
	}
	o.stdout = outW
	if withStderr {
		o.stderr = errW
	} else {
		errW.Close()
	}
	o.logger = cmd
	return o, nil
}

// sharedCloser closes one file after every writer opened on it closed.
type sharedCloser struct {
	mu   sync.Mutex
	f    *os.File
	refs int
}

func (s *sharedCloser) open() io.WriteCloser {
	s.mu.Lock()
	s.refs++
	s.mu.Unlock()
	return &sharedWriter{s: s}
}

type sharedWriter struct {
	s    *sharedCloser
	once sync.Once
}

func (w *sharedWriter) Write(b []byte) (int, error) { return w.s.f.Write(b) }

func (w *sharedWriter) Close() error {
	var err error
	w.once.Do(func() {
		w.s.mu.Lock()
		defer w.s.mu.Unlock()
		if w.s.refs--; w.s.refs == 0 {
			err = w.s.f.Close()
		}
	})
	return err
}

// wait returns once the output has reached containerd's side, or when ctx
// ends; it reports whether the output ended.
func (h *hostIO) wait(ctx context.Context) bool {
	done := make(chan struct{})
	go func() {
		h.copying.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// drain is the end of an exited process's output: it waits for the
// streams to end, for at most timeout (exitDrainTimeout), and then cuts them. The
// guest ends them at the process's exit (the agent stops reading a pipe
// that stays open after it, drainIdle); one that goes on sending would
// otherwise hold containerd's readers (ctr waits for the end of the output
// before it deletes the task) for ever.
func (h *hostIO) drain(ctx context.Context, timeout time.Duration) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !h.wait(dctx) && ctx.Err() == nil {
		log.G(ctx).Warnf("the guest did not end the output of an exited process within %s: cut", timeout)
		h.close()
	}
}

// closeStdin is CloseIO: the shim lets go of its write end, so the stdin
// copy ends at the FIFO's end-of-file once the client's writers are closed
// too; if that has not come within a grace period, stdin is cut off.
func (h *hostIO) closeStdin() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stdinPath == "" || h.stdinClosed {
		return
	}
	h.stdinClosed = true
	if h.stdinF == nil {
		return // startStdin closes its write end at once
	}
	h.stdinW.Close()
	f := h.stdinF
	go func() {
		select {
		case <-h.stdinDone:
		case <-time.After(stdinCloseGrace):
			f.Close()
		}
	}()
}

// close frees everything: streams, FIFOs, files, the logging binary.
func (h *hostIO) close() {
	h.mu.Lock()
	closers := h.closers
	h.closers = nil
	logger := h.logger
	h.logger = nil
	h.mu.Unlock()
	for _, c := range closers {
		c.Close()
	}
	if logger != nil {
		// The logger ends once its pipes close; it is our child (no reaper
		// in this shim), so wait for it, but not for ever.
		done := make(chan struct{})
		go func() {
			logger.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			logger.Process.Kill()
			<-done
		}
	}
}

// notifyWriter calls fn once, after its first write.
type notifyWriter struct {
	io.WriteCloser
	once *sync.Once
	fn   func()
}

func (w *notifyWriter) Write(b []byte) (int, error) {
	n, err := w.WriteCloser.Write(b)
	if n > 0 {
		w.once.Do(w.fn)
	}
	return n, err
}
