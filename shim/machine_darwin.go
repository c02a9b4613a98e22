package shim

import "context"

// cleanupMachine has nothing to do on macOS: a VZ VM lives in the shim's
// own process, so a dead shim leaves no VM (and no files) behind.
func cleanupMachine(ctx context.Context, stateDir string) error { return nil }
