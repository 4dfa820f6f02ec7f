package agent

import (
	"context"
	"fmt"
	"io"
	"os/exec"

	"github.com/creack/pty"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	utilexec "k8s.io/utils/exec"
)

// runWithTTY runs cmd on a new pseudo-terminal for `kubectl exec -t`, following resizes.
func runWithTTY(ctx context.Context, cmd *exec.Cmd, attach api.AttachIO) error {
	f, err := pty.Start(cmd)
	if err != nil {
		return err
	}
	defer f.Close()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case sz, ok := <-attach.Resize():
				if !ok {
					return
				}
				pty.Setsize(f, &pty.Winsize{Rows: sz.Height, Cols: sz.Width})
			}
		}
	}()
	if in := attach.Stdin(); in != nil {
		go io.Copy(f, in)
	}
	outDone := make(chan struct{})
	go func() {
		if out := attach.Stdout(); out != nil {
			io.Copy(out, f)
		} else {
			io.Copy(io.Discard, f)
		}
		close(outDone)
	}()
	err = cmd.Wait()
	f.Close()
	<-outDone
	if ee, ok := err.(*exec.ExitError); ok {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", ExitCodeOf(ee)), Code: ExitCodeOf(ee)}
	}
	return err
}
