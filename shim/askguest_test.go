package shim

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestAskGuest: a call is silent only when the guest let its own time pass; an answer, an error
// answer, or the caller's end is not.
func TestAskGuest(t *testing.T) {
	const d = 50 * time.Millisecond
	errRefused := errors.New("refused")
	wait := func(ctx context.Context) (int, error) {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	for _, tc := range []struct {
		name       string
		call       func(context.Context) (int, error)
		cancel     bool // the caller's ctx ends first
		wantSilent bool
		wantErr    error
	}{
		{name: "answers", call: func(context.Context) (int, error) { return 7, nil }},
		{name: "refuses", call: func(context.Context) (int, error) { return 0, errRefused }, wantErr: errRefused},
		{name: "silent", call: wait, wantSilent: true, wantErr: context.DeadlineExceeded},
		{name: "caller gone", call: wait, cancel: true, wantErr: context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancel {
				time.AfterFunc(d/5, cancel)
			}
			resp, silent, err := askGuest(ctx, d, tc.call)
			if silent != tc.wantSilent || !errors.Is(err, tc.wantErr) || (err == nil && resp != 7) {
				t.Errorf("askGuest: %d, silent %v, %v; want silent %v, %v", resp, silent, err, tc.wantSilent, tc.wantErr)
			}
		})
	}
}
