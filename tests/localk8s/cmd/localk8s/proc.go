package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ProcRef identifies a process across launcher crashes: a PID alone could be reused, so the
// start time (field 22 of /proc/PID/stat, in clock ticks since boot) must match too.
type ProcRef struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
	Name  string `json:"name,omitempty"`
}

func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// after ")" field 3 (state) is f[0]; field 22 (starttime) is f[19]
	if len(f) < 20 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func selfRef(name string) ProcRef {
	st, _ := procStart(os.Getpid())
	return ProcRef{PID: os.Getpid(), Start: st, Name: name}
}

// alive reports whether r still names the same running process.
func (r ProcRef) alive() bool {
	if r.PID <= 0 {
		return false
	}
	st, err := procStart(r.PID)
	if err != nil || st != r.Start {
		return false
	}
	// a zombie is not alive for our purposes
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", r.PID))
	if i := strings.LastIndexByte(string(b), ')'); i >= 0 && len(b) > i+2 && b[i+2] == 'Z' {
		return false
	}
	return true
}

// State is DIR/state.json: everything the launcher changed on the host, so `down` can undo it
// after a crash.
type State struct {
	Launcher     ProcRef            `json:"launcher"`
	BinDir       string             `json:"binDir"`
	Procs        map[string]ProcRef `json:"procs"`
	Bridge       string             `json:"bridge,omitempty"`
	Routes       []string           `json:"routes,omitempty"`
	Sysctls      map[string]string  `json:"sysctls,omitempty"` // /proc/sys path -> value before we started
	IptChains    []string           `json:"iptChains,omitempty"`
	IptRules     [][]string         `json:"iptRules,omitempty"` // iptables args after -A/-I (table first)
	KubeProxy    bool               `json:"kubeProxy,omitempty"`
	NetnsPrefix  string             `json:"netnsPrefix"`
	CNIStateDirs []string           `json:"cniStateDirs,omitempty"`
	NftTables    []string           `json:"nftTables"` // nftables tables before we started (nil: unknown)
}

type stateFile struct {
	mu   sync.Mutex
	path string
	s    State
}

func loadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("state.json: %w", err)
	}
	return &s, nil
}

func (f *stateFile) update(fn func(s *State)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.s)
	b, _ := json.MarshalIndent(&f.s, "", "  ")
	if err := writeFileAtomic(f.path, b, 0o644); err != nil {
		errf("writing %s: %v", f.path, err)
	}
}

// proc is one supervised upstream component. It is restarted if it exits on its own.
type proc struct {
	name    string
	path    string
	args    []string
	logPath string
	st      *stateFile

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	stopping bool
	restarts int
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.startLocked()
}

func (p *proc) startLocked() error {
	lf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(lf, "==== %s localk8s: starting %s %s\n", time.Now().Format(time.RFC3339), p.path, strings.Join(p.args, " "))
	cmd := exec.Command(p.path, p.args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), "KUBECONFIG=") // never pick up a user's kubeconfig
	// Own process group: a terminal's Ctrl-C reaches only the launcher, which stops the
	// components in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("starting %s: %w", p.name, err)
	}
	st, _ := procStart(cmd.Process.Pid)
	p.cmd, p.done, p.stopping = cmd, make(chan struct{}), false
	p.st.update(func(s *State) { s.Procs[p.name] = ProcRef{PID: cmd.Process.Pid, Start: st, Name: p.name} })
	done := p.done
	started := time.Now()
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(lf, "==== %s localk8s: %s exited: %v\n", time.Now().Format(time.RFC3339), p.name, err)
		lf.Close()
		close(done)
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.stopping || p.cmd != cmd {
			return
		}
		if time.Since(started) > time.Minute {
			p.restarts = 0 // it ran fine for a while: back-off starts over
		}
		p.restarts++
		delay := time.Duration(min(p.restarts, 10)) * time.Second
		errf("%s exited unexpectedly (%v); restarting in %v (see %s)", p.name, err, delay, p.logPath)
		p.cmd = nil
		go func() {
			time.Sleep(delay)
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.stopping || p.cmd != nil {
				return
			}
			if err := p.startLocked(); err != nil {
				errf("%v", err)
			}
		}()
	}()
	return nil
}

// stop sends SIGTERM to the component's process group, SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	p.mu.Lock()
	p.stopping = true
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		errf("%s did not stop within %v; killing it", p.name, grace)
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	p.st.update(func(s *State) { delete(s.Procs, p.name) })
}

// restart is the fault hook: SIGTERM, SIGKILL after 5 s (an apiserver with open watches can
// take its full request timeout to drain), start again.
func (p *proc) restart() error {
	p.stop(5 * time.Second)
	return p.start()
}

func (p *proc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// killRef stops a recorded process (and its group) if it is still the same process.
func killRef(r ProcRef) {
	if !r.alive() {
		return
	}
	_ = syscall.Kill(-r.PID, syscall.SIGTERM)
	_ = syscall.Kill(r.PID, syscall.SIGTERM)
	for i := 0; i < 100 && r.alive(); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if r.alive() {
		_ = syscall.Kill(-r.PID, syscall.SIGKILL)
		_ = syscall.Kill(r.PID, syscall.SIGKILL)
	}
}

func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

var errNotRunning = errors.New("no launcher is running on this state dir")
