//go:build linux

package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// fakeQEMU answers QMP on conn: every command gets an empty return except
// "fail" (an error) and "slow" (no answer at all); "poke" also sends an
// event first.
func fakeQEMU(t *testing.T, conn net.Conn) {
	t.Helper()
	go func() {
		defer conn.Close()
		w := func(s string) { conn.Write([]byte(s + "\r\n")) }
		w(`{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": ["oob"]}}`)
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			var req struct {
				Execute string          `json:"execute"`
				ID      json.RawMessage `json:"id"`
			}
			if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
				t.Errorf("fake qemu: %q: %v", sc.Text(), err)
				return
			}
			switch req.Execute {
			case "slow":
			case "fail":
				w(`{"error": {"class": "GenericError", "desc": "no"}, "id": ` + string(req.ID) + `}`)
			case "poke":
				w(`{"event": "VSERPORT_CHANGE", "data": {"id": "agentport", "open": true}, "timestamp": {}}`)
				w(`{"return": {"x": 1}, "id": ` + string(req.ID) + `}`)
			case "quit":
				w(`{"return": {}, "id": ` + string(req.ID) + `}`)
				return
			default:
				w(`{"return": {}, "id": ` + string(req.ID) + `}`)
			}
		}
	}()
}

func TestQMP(t *testing.T) {
	ours, theirs := net.Pipe()
	fakeQEMU(t, theirs)
	events := make(chan qmpEvent, 1)
	q := newQMP(ours, func(ev qmpEvent) { events <- ev })
	defer q.close()
	ctx := context.Background()

	if err := q.handshake(ctx); err != nil {
		t.Fatal(err)
	}
	ret, err := q.execute(ctx, "poke", nil)
	if err != nil || string(ret) != `{"x": 1}` {
		t.Fatalf("poke: %s, %v", ret, err)
	}
	if ev := <-events; ev.Event != "VSERPORT_CHANGE" || !strings.Contains(string(ev.Data), `"open": true`) {
		t.Errorf("event %+v", ev)
	}
	var qe *qmpError
	if _, err := q.execute(ctx, "fail", nil); !errors.As(err, &qe) || qe.Desc != "no" {
		t.Errorf("fail: %v", err)
	}

	// A command that times out does not confuse the next one.
	sctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = q.execute(sctx, "slow", nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow: %v", err)
	}
	if _, err := q.execute(ctx, "stop", map[string]any{"a": 1}); err != nil {
		t.Errorf("stop after a timeout: %v", err)
	}

	// QEMU goes away: commands fail as unavailable instead of hanging.
	if _, err := q.execute(ctx, "quit", nil); err != nil {
		t.Errorf("quit: %v", err)
	}
	<-q.done
	if _, err := q.execute(ctx, "cont", nil); !errdefs.IsUnavailable(err) {
		t.Errorf("cont after EOF: %v", err)
	}
}

func TestQMPGreetingTimeout(t *testing.T) {
	ours, theirs := net.Pipe()
	defer theirs.Close()
	q := newQMP(ours, nil)
	defer q.close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := q.handshake(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("handshake without greeting: %v", err)
	}
}
