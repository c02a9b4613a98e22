package shim

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"github.com/sirupsen/logrus"
	"google.golang.org/protobuf/proto"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

// eventService is a shim with one container, c1, with its init and the
// exec e1.
func eventService() *service {
	c := &container{id: "c1", procs: map[string]*hostProcess{"": {}, "e1": {execID: "e1"}}}
	return &service{containers: map[string]*container{"c1": c}}
}

// TestCheckGuestEvent: the agent's events pass only under their own topic
// and about this shim's containers and processes.
func TestCheckGuestEvent(t *testing.T) {
	s := eventService()
	for _, tc := range []struct {
		name  string
		topic string
		ev    any
		ok    bool
	}{
		{"exit of init", runtime.TaskExitEventTopic, &eventstypes.TaskExit{ContainerID: "c1", ID: "c1"}, true},
		{"exit of an exec", runtime.TaskExitEventTopic, &eventstypes.TaskExit{ContainerID: "c1", ID: "e1"}, true},
		{"exit of another task", runtime.TaskExitEventTopic, &eventstypes.TaskExit{ContainerID: "other", ID: "other"}, false},
		{"exit of an unknown exec", runtime.TaskExitEventTopic, &eventstypes.TaskExit{ContainerID: "c1", ID: "e9"}, false},
		{"exit under the start topic", runtime.TaskStartEventTopic, &eventstypes.TaskExit{ContainerID: "c1", ID: "c1"}, false},
		{"start", runtime.TaskStartEventTopic, &eventstypes.TaskStart{ContainerID: "c1"}, true},
		{"oom of another task", runtime.TaskOOMEventTopic, &eventstypes.TaskOOM{ContainerID: "c2"}, false},
		{"exec added", runtime.TaskExecAddedEventTopic, &eventstypes.TaskExecAdded{ContainerID: "c1", ExecID: "e1"}, true},
		{"a container event", "/containers/delete", &eventstypes.ContainerDelete{ID: "c1"}, false},
		{"an image event", "/images/delete", &eventstypes.ImageDelete{Name: "x"}, false},
		{"port", agentapi.PortEventTopic, &agentapi.PortEvent{Protocol: "tcp", Port: 80}, true},
		{"port under a task topic", runtime.TaskExitEventTopic, &agentapi.PortEvent{}, false},
	} {
		err := s.checkGuestEvent(tc.topic, tc.ev)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want admitted %v", tc.name, err, tc.ok)
		}
		if err != nil && !errdefs.IsInvalidArgument(err) && !errdefs.IsNotFound(err) {
			t.Errorf("%s: %v: want invalid argument or not found", tc.name, err)
		}
	}
}

// FuzzGuestEvent: whatever envelope a guest sends, the shim does not crash,
// and admits only events about its own container under their own topic.
func FuzzGuestEvent(f *testing.F) {
	for _, seed := range []struct {
		topic string
		ev    typeurl.Any
	}{
		{runtime.TaskExitEventTopic, mustAny(f, &eventstypes.TaskExit{ContainerID: "c1", ID: "c1", ExitStatus: 3})},
		{runtime.TaskStartEventTopic, mustAny(f, &eventstypes.TaskStart{ContainerID: "c1", Pid: 7})},
		{agentapi.PortEventTopic, mustAny(f, &agentapi.PortEvent{Protocol: "udp", Port: 53, Listening: true})},
		{runtime.TaskExitEventTopic, mustAny(f, &eventstypes.TaskExit{ContainerID: "c2"})},
	} {
		env := &agentapi.Envelope{Topic: seed.topic, Event: typeurl.MarshalProto(seed.ev)}
		b, err := proto.Marshal(env)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	s := eventService()
	f.Fuzz(func(t *testing.T, data []byte) {
		var env agentapi.Envelope
		if err := proto.Unmarshal(data, &env); err != nil {
			return
		}
		v, err := typeurl.UnmarshalAny(env.Event)
		if err != nil {
			return
		}
		if err := s.checkGuestEvent(env.Topic, v); err != nil {
			return
		}
		switch e := v.(type) {
		case *agentapi.PortEvent:
			if env.Topic != agentapi.PortEventTopic {
				t.Errorf("port event admitted under %q", env.Topic)
			}
		case *eventstypes.TaskExit:
			if e.ContainerID != "c1" || env.Topic != runtime.TaskExitEventTopic {
				t.Errorf("exit of %q under %q admitted", e.ContainerID, env.Topic)
			}
		case interface{ GetContainerID() string }:
			if e.GetContainerID() != "c1" {
				t.Errorf("%T of %q admitted", v, e.GetContainerID())
			}
		default:
			t.Errorf("%T admitted", v)
		}
	})
}

func mustAny(tb testing.TB, m proto.Message) typeurl.Any {
	a, err := typeurl.MarshalAny(m)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// TestDropLogBounded: a guest that sends nothing but forged events gets a
// few log lines, not one per event (the shim's log is containerd's).
func TestDropLogBounded(t *testing.T) {
	var buf bytes.Buffer
	l := logrus.New()
	l.Out = &buf
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(l))
	var d dropLog
	for i := 0; i < 100000; i++ {
		d.log(ctx, "/tasks/exit", errdefs.ErrPermissionDenied)
	}
	if n := strings.Count(buf.String(), "\n"); n < dropLogFirst || n > dropLogFirst+1 {
		t.Errorf("%d log lines for 100000 dropped events, want %d or %d", n, dropLogFirst, dropLogFirst+1)
	}
	if d.n != 100000 {
		t.Errorf("counted %d drops", d.n)
	}
}

// TestAbandoned: a group's VM is abandoned only once every container's
// bundle is gone; the bundle of the container that booted it goes when that
// one is deleted, while the others run on.
func TestAbandoned(t *testing.T) {
	dir := t.TempDir()
	first, joiner := filepath.Join(dir, "first"), filepath.Join(dir, "joiner")
	for _, d := range []string{first, joiner} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	sb := &sandbox{bundle: first}
	s := &service{containers: map[string]*container{
		"first":  {id: "first", bundle: first, sb: sb},
		"joiner": {id: "joiner", bundle: joiner, sb: sb},
	}}
	if s.abandoned(sb) {
		t.Error("abandoned with every bundle there")
	}
	// The first container deleted through the shim: containerd removes its bundle.
	delete(s.containers, "first")
	os.Remove(first)
	if s.abandoned(sb) {
		t.Error("abandoned while the joiner's bundle is there")
	}
	os.Remove(joiner)
	if !s.abandoned(sb) {
		t.Error("not abandoned with every bundle gone")
	}
	// No container left: the VM's own bundle counts.
	s.containers = map[string]*container{}
	if !s.abandoned(sb) {
		t.Error("not abandoned with no container and the VM's bundle gone")
	}
	os.Mkdir(first, 0o700)
	if s.abandoned(sb) {
		t.Error("abandoned with no container but the VM's bundle there")
	}
}
