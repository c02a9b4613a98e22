package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// cgroup is the cgroup runc put a container in. The guest has cgroup v2;
// v1 is for host mode on older hosts.
type cgroup struct {
	v1   cgroup1.Cgroup
	v2   *cgroup2.Manager
	path string // v2: the directory under /sys/fs/cgroup
}

// loadCgroup finds the cgroup of pid, as the runc shim does. nil means that
// stats and OOM events are unavailable for the container.
func loadCgroup(ctx context.Context, pid int) *cgroup {
	if cgroups.Mode() == cgroups.Unified {
		g, err := cgroup2.PidGroupPath(pid)
		if err == nil {
			var m *cgroup2.Manager
			if m, err = cgroup2.Load(g); err == nil {
				return &cgroup{v2: m, path: filepath.Join("/sys/fs/cgroup", g)}
			}
		}
		log.G(ctx).WithError(err).WithField("pid", pid).Warn("loading cgroup2")
		return nil
	}
	cg, err := cgroup1.Load(cgroup1.PidPath(pid))
	if err != nil {
		log.G(ctx).WithError(err).WithField("pid", pid).Warn("loading cgroup")
		return nil
	}
	return &cgroup{v1: cg}
}

// stats gives the metrics in the form containerd's runc shim returns
// (io.containerd.cgroups.v1.Metrics or io.containerd.cgroups.v2.Metrics).
func (cg *cgroup) stats() (any, error) {
	if cg == nil {
		return nil, fmt.Errorf("container has no cgroup: %w", errdefs.ErrNotFound)
	}
	if cg.v1 != nil {
		m, err := cg.v1.Stat(cgroup1.IgnoreNotExist)
		if err != nil {
			return nil, fmt.Errorf("reading cgroup stats: %w", err)
		}
		return m, nil
	}
	m, err := cg.v2.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading cgroup stats: %w", err)
	}
	return m, nil
}

// watchOOM publishes a TaskOOM event for the container each time the kernel
// OOM-kills one of its processes, until the returned file is closed. The
// agent owns the file, unlike containerd's watchers, so that deleting a
// container frees it at once.
func (cg *cgroup) watchOOM(ctx context.Context, q *eventQueue, c *container) (*os.File, error) {
	if cg == nil {
		return nil, nil
	}
	if cg.v1 != nil {
		fd, err := cg.v1.OOMEventFD()
		if err != nil {
			return nil, err
		}
		f, err := pollable(int(fd), "oom-eventfd")
		if err != nil {
			return nil, err
		}
		go func() {
			buf := make([]byte, 8)
			for {
				if _, err := f.Read(buf); err != nil {
					return // closed at delete
				}
				// The eventfd also fires when the cgroup goes away.
				if cg.v1.State() != cgroup1.Deleted {
					publishOOM(ctx, q, c)
				}
			}
		}()
		return f, nil
	}

	events := filepath.Join(cg.path, "memory.events")
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, events, unix.IN_MODIFY); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watching %s: %w", events, err)
	}
	f, err := pollable(fd, "oom-inotify")
	if err != nil {
		return nil, err
	}
	go func() {
		var seen uint64
		buf := make([]byte, 4096)
		for {
			if _, err := f.Read(buf); err != nil {
				return // closed at delete
			}
			n, err := oomKills(events)
			if err != nil {
				return // the cgroup is gone
			}
			if n > seen {
				seen = n
				publishOOM(ctx, q, c)
			}
		}
	}()
	return f, nil
}

func publishOOM(ctx context.Context, q *eventQueue, c *container) {
	log.G(ctx).WithField("id", c.id).Info("container OOM-killed")
	publishIn(c.namespace, q, runtime.TaskOOMEventTopic, &eventstypes.TaskOOM{ContainerID: c.id})
}

// oomKills reads oom_kill from a cgroup v2 memory.events file.
func oomKills(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := bytes.Cut(sc.Bytes(), []byte(" "))
		if ok && string(k) == "oom_kill" {
			return strconv.ParseUint(string(v), 10, 64)
		}
	}
	return 0, errors.New("memory.events has no oom_kill")
}

// pollable wraps fd so that the runtime's poller owns it: a Close then ends
// a blocked Read.
func pollable(fd int, name string) (*os.File, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}
