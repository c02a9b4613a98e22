package agent

import (
	"context"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

// maxQueuedEvents bounds the events kept while no shim listens. Task events
// are few per task, so reaching it means the shim is gone for good.
const maxQueuedEvents = 4096

// eventQueue holds task events until the shim's event stream takes them. It
// is an events.Publisher, so containerd's OOM watchers can publish into it.
type eventQueue struct {
	mu      sync.Mutex
	queue   []*agentapi.Envelope
	wake    chan struct{} // closed and replaced whenever an event is queued
	dropped int
}

var _ events.Publisher = (*eventQueue)(nil)

func newEventQueue() *eventQueue {
	return &eventQueue{wake: make(chan struct{})}
}

// Publish queues an event; it never blocks on the shim.
func (q *eventQueue) Publish(ctx context.Context, topic string, event events.Event) error {
	a, err := typeurl.MarshalAnyToProto(event)
	if err != nil {
		return err
	}
	ns, _ := namespaces.Namespace(ctx)
	env := &agentapi.Envelope{
		Timestamp: protobuf.ToTimestamp(time.Now()),
		Namespace: ns,
		Topic:     topic,
		Event:     a,
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.queue) >= maxQueuedEvents {
		q.queue = q.queue[1:]
		q.dropped++
		log.G(ctx).WithField("dropped", q.dropped).Warn("event queue full, dropping the oldest event")
	}
	q.queue = append(q.queue, env)
	close(q.wake)
	q.wake = make(chan struct{})
	return nil
}

// next returns the oldest queued event without removing it, or a channel
// that is closed when one arrives.
func (q *eventQueue) next() (*agentapi.Envelope, <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.queue) > 0 {
		return q.queue[0], nil
	}
	return nil, q.wake
}

// pop removes env once it has been sent.
func (q *eventQueue) pop(env *agentapi.Envelope) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.queue) > 0 && q.queue[0] == env {
		q.queue = q.queue[1:]
	}
}

// eventService streams the queue to one shim at a time.
type eventService struct {
	q *eventQueue
	// mu makes streams take turns: a reconnecting shim waits until the
	// previous stream has noticed that it is gone.
	mu sync.Mutex
}

var _ agentapi.EventsService = (*eventService)(nil)

func (s *eventService) Stream(ctx context.Context, _ *agentapi.StreamEventsRequest, ss agentapi.Events_StreamServer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		env, wake := s.q.next()
		if env == nil {
			select {
			case <-wake:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		// An event is removed only after it was handed to the stream, so
		// a stream that breaks loses nothing it had not sent.
		if err := ss.Send(env); err != nil {
			return err
		}
		s.q.pop(env)
	}
}

// publishIn queues an event of namespace ns. It logs and goes on: an event
// that cannot be marshalled is a programming error, not the caller's.
func publishIn(ns string, q *eventQueue, topic string, ev events.Event) {
	ctx := namespaces.WithNamespace(context.Background(), ns)
	if err := q.Publish(ctx, topic, ev); err != nil {
		log.G(ctx).WithError(err).WithField("topic", topic).Error("publishing event")
	}
}

// anyToProto is used where the task API wants a protobuf Any.
func anyToProto(v any) (*anypb.Any, error) {
	return typeurl.MarshalAnyToProto(v)
}
