package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// withShutdown turns SIGINT and SIGTERM into a graceful stop: the first
// closes drain (finish the step under way, start no other), the second
// cancels ctx (stop now; a journaled switchover resumes on the next run).
// say reports the first signal (the loop logs it; apply prints it).
func withShutdown(parent context.Context, say func(string)) (ctx context.Context, drain <-chan struct{}, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	drainCh := make(chan struct{})
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sigs:
			say(fmt.Sprintf("%v: finishing the step under way, then stopping (signal again to stop at once)", s))
			close(drainCh)
		case <-done:
			return
		}
		select {
		case s := <-sigs:
			cancel(fmt.Errorf("stopped by a second %v", s))
		case <-done:
		}
	}()
	return ctx, drainCh, func() {
		signal.Stop(sigs)
		close(done)
		cancel(nil)
	}
}
