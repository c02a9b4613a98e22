// Command containerd-shim-vz-v1 is containerd's runtime io.containerd.vz.v1:
// it runs each task in its own micro-VM.
package main

import (
	"context"

	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"

	vzshim "github.com/vz-shim/containerd-shim-vz/shim"
)

func init() {
	registry.Register(&plugin.Registration{
		Type:     plugins.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugins.EventPlugin, plugins.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (any, error) {
			pp, err := ic.GetByID(plugins.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			return vzshim.NewTaskService(ic.Context, pp.(shim.Publisher), ss.(shutdown.Service))
		},
	})
}

func main() {
	// The shim's only child is the VMM, which it waits for itself: the
	// default reaper would steal its exit status.
	shim.RunShim(context.Background(), vzshim.NewManager(), func(c *shim.Config) {
		c.NoReaper = true
		c.NoSubreaper = true
	})
}
