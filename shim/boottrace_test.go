package shim

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	"google.golang.org/protobuf/types/known/durationpb"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

func TestBootTrace(t *testing.T) {
	var buf bytes.Buffer
	l := logrus.New()
	l.Out = &buf
	l.Formatter = &logrus.TextFormatter{DisableTimestamp: true}
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(l))

	tr := newBootTrace("c1")
	start := tr.start
	tr.markAt(ctx, phaseVMMStarted, start.Add(100*time.Millisecond))
	// The agent answered 2 s after Create began, 1.5 s into the guest's uptime: the kernel was
	// entered at 0.5 s, /init ran at 0.5+1.0 s.
	tr.guest(ctx, []*agentapi.BootPhase{
		{Name: "init", Uptime: durationpb.New(time.Second)},
		{Name: "serving", Uptime: durationpb.New(1400 * time.Millisecond)},
	}, 1500*time.Millisecond, start.Add(2*time.Second))
	tr.markAt(ctx, phaseConnected, start.Add(2*time.Second))
	tr.markAt(ctx, phaseConnected, start.Add(3*time.Second)) // once only
	var nilTrace *bootTrace
	nilTrace.mark(ctx, phaseExited) // a VM without a trace logs nothing

	got := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{
		`phase="vmm started" at=100ms took=100ms`,
		`phase="kernel entered" at=500ms took=400ms`,
		`phase="init running" at=1.5s took=1s`,
		`phase="agent serving" at=1.9s took=400ms`,
		`phase="agent connected" at=2s took=100ms`,
	}
	if len(got) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(got), len(want), buf.String())
	}
	for i, w := range want {
		fields := strings.Fields(w)
		for _, f := range []string{fields[len(fields)-2], fields[len(fields)-1], `msg="boot trace"`, "id=c1"} {
			if !strings.Contains(got[i], f) {
				t.Errorf("line %d %q lacks %q", i, got[i], f)
			}
		}
		if !strings.Contains(got[i], strings.TrimSuffix(w, " "+fields[len(fields)-2]+" "+fields[len(fields)-1])) {
			t.Errorf("line %d %q: want %s", i, got[i], w)
		}
	}
}
