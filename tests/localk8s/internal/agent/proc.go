package agent

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one running container instance: `ip netns exec NS bwrap ... -- argv`.
type proc struct {
	cmd      *exec.Cmd
	childPid int // the container's main process (host pid; PID 1 of its own PID namespace, or not with shareProcessNamespace)
	started  time.Time
	done     chan struct{}
	exitCode int32
	signaled bool
	finished time.Time
	logPath  string
	// stdin is the write end of the container's stdin (spec.stdin), nil when its stdin is
	// /dev/null. attach writes to it; stdinMu serializes attaches.
	stdin   *os.File
	stdinMu sync.Mutex
}

// startProc starts the sandboxed process, its output going to logPath in CRI log format
// ("<RFC3339Nano> stdout|stderr F <line>").
func startProc(args []string, env []string, logPath string) (*proc, error) {
	return startProcWith(args, env, logPath, nil, true, false)
}

// startProcWith is startProc with fd4 (if not nil) passed to the child as fd 4 (the shared PID
// namespace for bwrap --pidns 4). waitExec waits until bwrap's child has exec'd its program
// (false for a pod's infra process, whose PID 1 stays bwrap's init). withStdin gives the
// process a pipe as stdin (a container with `stdin: true`), kept open for `kubectl attach -i`.
func startProcWith(args []string, env []string, logPath string, fd4 *os.File, waitExec, withStdin bool) (*proc, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	statusR, statusW, err := os.Pipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = env
	cmd.ExtraFiles = []*os.File{statusW} // fd 3
	if fd4 != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, fd4)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	outR, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	errR, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	var stdinR, stdinW *os.File
	if withStdin {
		if stdinR, stdinW, err = os.Pipe(); err != nil {
			lf.Close()
			statusR.Close()
			statusW.Close()
			return nil, err
		}
		cmd.Stdin = stdinR
	}
	if err := cmd.Start(); err != nil {
		lf.Close()
		statusR.Close()
		statusW.Close()
		if stdinR != nil {
			stdinR.Close()
			stdinW.Close()
		}
		return nil, err
	}
	statusW.Close()
	if stdinR != nil {
		stdinR.Close()
	}
	p := &proc{cmd: cmd, started: time.Now(), done: make(chan struct{}), logPath: logPath, stdin: stdinW}
	var mu sync.Mutex
	var wg sync.WaitGroup
	copyLog := func(r io.Reader, stream string) {
		defer wg.Done()
		br := bufio.NewReaderSize(r, 64*1024)
		for {
			line, err := br.ReadString('\n')
			if len(line) > 0 {
				tag := "F"
				if !strings.HasSuffix(line, "\n") {
					line += "\n"
					if err == nil {
						tag = "P"
					}
				}
				mu.Lock()
				fmt.Fprintf(lf, "%s %s %s %s", time.Now().UTC().Format(time.RFC3339Nano), stream, tag, line)
				mu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}
	wg.Add(2)
	go copyLog(outR, "stdout")
	go copyLog(errR, "stderr")
	pidCh := make(chan int, 1)
	go func() {
		dec := json.NewDecoder(statusR)
		sent := false
		for {
			var m map[string]any
			if err := dec.Decode(&m); err != nil {
				break
			}
			if v, ok := m["child-pid"].(float64); ok && !sent {
				pidCh <- int(v)
				sent = true
			}
		}
		if !sent {
			pidCh <- 0
		}
		statusR.Close()
	}()
	select {
	case pid := <-pidCh:
		p.childPid = pid
	case <-time.After(10 * time.Second):
	}
	// bwrap reports the child's pid before the sandbox is set up: wait until the child has
	// exec'd the container's program, so exec/nsenter sees the finished mount namespace.
	if p.childPid > 0 && waitExec {
		for i := 0; i < 300; i++ {
			exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.childPid))
			if err != nil || !strings.HasSuffix(exe, "/bwrap") {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	go func() {
		wg.Wait()
		err := cmd.Wait()
		lf.Close()
		p.finished = time.Now()
		if p.stdin != nil {
			p.stdin.Close()
		}
		if err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				ws := ee.Sys().(syscall.WaitStatus)
				if ws.Signaled() {
					p.exitCode, p.signaled = 128+int32(ws.Signal()), true
				} else {
					p.exitCode = int32(ws.ExitStatus())
				}
			} else {
				p.exitCode = 128
			}
		}
		close(p.done)
	}()
	return p, nil
}

// signal sends sig to the container's main process (and, for SIGKILL, to bwrap too).
func (p *proc) signal(sig syscall.Signal) {
	if p.childPid > 0 {
		syscall.Kill(p.childPid, sig)
	}
	if sig == syscall.SIGKILL && p.cmd.Process != nil {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs, and waits for the exit.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	p.signal(syscall.SIGTERM)
	if grace > 0 {
		select {
		case <-p.done:
			return
		case <-time.After(grace):
		}
	}
	p.signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

// nsenterArgs is the command line that runs argv inside a running container's namespaces.
func nsenterArgs(pid int, uid, gid *int64, argv []string) []string {
	a := []string{"nsenter", "-t", strconv.Itoa(pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w"}
	if uid != nil {
		a = append(a, "-S", strconv.FormatInt(*uid, 10))
	}
	if gid != nil {
		a = append(a, "-G", strconv.FormatInt(*gid, 10))
	}
	return append(append(a, "--"), argv...)
}
