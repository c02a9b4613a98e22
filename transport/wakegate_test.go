package transport

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// TestWakeGate: over a transport whose connections do not survive a save
// (the Unix one here, vsock on VZ), the template's maker reads the idle
// mark and hangs up, as it does before the save; a restored VM's host then
// wakes the agent on a new connection. No listener behind the gate
// accepts before the wake was applied, and every one does after.
func TestWakeGate(t *testing.T) {
	u := Unix{Dir: t.TempDir()}
	wln, err := u.Listen(7)
	if err != nil {
		t.Fatal(err)
	}
	defer wln.Close()
	woke := make(chan Wake, 1)
	g := NewWakeGate(wln, func(w Wake) error { woke <- w; return nil })
	ln, err := g.Factory(u).Listen(8)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Not idle yet: the host waits.
	c, err := u.Dial(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	short, scancel := context.WithTimeout(ctx, 100*time.Millisecond)
	if err := AwaitIdleConn(short, c); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("AwaitIdleConn before Idle: %v, want the deadline", err)
	}
	scancel()
	c.Close()

	g.Idle()
	// The template's maker: idle mark, hang up (the save).
	c, err = u.Dial(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	if err := AwaitIdleConn(ctx, c); err != nil {
		t.Fatalf("AwaitIdleConn: %v", err)
	}
	c.Close()
	// A client of the gated port connects but is not served before the wake.
	client, err := u.Dial(ctx, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	select {
	case <-accepted:
		t.Fatal("a gated listener accepted before the wake")
	case <-time.After(100 * time.Millisecond):
	}

	// The restored VM's host.
	c, err = u.Dial(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := Wake{Time: time.Unix(1800000000, 42)}
	want.Seed[0], want.Seed[63] = 1, 2
	if err := SendWake(ctx, c, want); err != nil {
		t.Fatalf("SendWake: %v", err)
	}
	if w := <-woke; w.Seed != want.Seed || !w.Time.Equal(want.Time) {
		t.Errorf("woke with %+v, want %+v", w, want)
	}
	select {
	case s := <-accepted:
		s.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the gated listener did not accept after the wake")
	}
}

// TestWakeGateRefused: a wake the agent cannot apply is not acknowledged,
// and the gate stays shut.
func TestWakeGateRefused(t *testing.T) {
	u := Unix{Dir: t.TempDir()}
	wln, err := u.Listen(7)
	if err != nil {
		t.Fatal(err)
	}
	defer wln.Close()
	g := NewWakeGate(wln, func(Wake) error { return errors.New("no entropy for you") })
	g.Idle()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := u.Dial(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := SendWake(ctx, c, Wake{Time: time.Now()}); err == nil {
		t.Error("SendWake succeeded though the agent refused the wake")
	}
	select {
	case <-g.woken:
		t.Error("the gate opened after a refused wake")
	default:
	}
}
