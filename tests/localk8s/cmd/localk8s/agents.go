package main

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"kvcache.local/localk8s/internal/agent"
)

// nodeAgent is one node's agent loop. The stop-node / start-node fault hooks stop it (every
// pod process of the node ends, heartbeats stop, the API objects stay: a lost machine) and
// start it again (the agent finds the pods still bound to its node and runs them anew).
type nodeAgent struct {
	cfg    agent.Config
	cancel context.CancelFunc // nil while stopped
	done   chan struct{}      // closed when the loop has returned
}

// startAgents runs one node agent per node in this process; an agent that returns an error
// before shutdown is restarted after 5 s.
func (l *launcher) startAgents() error {
	ctx, cancel := context.WithCancel(context.Background())
	l.agentsCtx, l.agentsCancel = ctx, cancel
	l.agents = map[string]*nodeAgent{}
	for i, n := range l.nodes {
		cfg := agent.Config{
			NodeName:          n,
			Zone:              zones[i%len(zones)],
			KubeconfigPath:    l.path("kubeconfigs", n+".kubeconfig"),
			StateDir:          l.path("nodes", n),
			VolumesDir:        l.path("volumes"),
			CNIConfPath:       l.cniConf,
			CNIBinDir:         cniBinDir,
			NetnsPrefix:       fmt.Sprintf("%sn%d-", netnsPrefix, i+1),
			ClusterDNS:        dnsIP,
			ClusterDomain:     clusterDomain,
			KubeletListenAddr: fmt.Sprintf("%s:%d", hostIP, kubeletBasePort+i),
			KubeletCertFile:   l.pki.path("kubelet-" + n + ".crt"),
			KubeletKeyFile:    l.pki.path("kubelet-" + n + ".key"),
			ClientCAFile:      l.pki.path("ca.crt"),
			Images:            l.images,
			APIServerHost:     hostIP,
			APIServerPort:     apiPort,
		}
		if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
			return err
		}
		lf, err := os.OpenFile(l.path("logs", n+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		cfg.LogWriter = lf
		a := &nodeAgent{cfg: cfg}
		l.agents[n] = a
		l.startAgent(a)
	}
	return nil
}

// startAgent runs a's loop until its own context or the launcher's agent context ends.
// REQUIRES: a is stopped; l.agentsMu held or no hook can run yet.
func (l *launcher) startAgent(a *nodeAgent) {
	ctx, cancel := context.WithCancel(l.agentsCtx)
	a.cancel, a.done = cancel, make(chan struct{})
	l.agentsWG.Add(1)
	go func(done chan struct{}) {
		defer l.agentsWG.Done()
		defer close(done)
		for {
			err := runAgent(ctx, a.cfg)
			if ctx.Err() != nil {
				return
			}
			errf("node agent %s stopped: %v; restarting in 5s", a.cfg.NodeName, err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
		}
	}(a.done)
}

// nodeHook serves stop-node / start-node. The Node goes NotReady once the controller-manager's
// --node-monitor-grace-period passes without a heartbeat, and its pods' Ready turns False.
func (l *launcher) nodeHook(op, name string) string {
	l.agentsMu.Lock()
	defer l.agentsMu.Unlock()
	a := l.agents[name]
	if a == nil {
		return "error unknown node " + name
	}
	switch {
	case op == "stop-node" && a.cancel != nil:
		t0 := time.Now()
		logf("fault hook: stopping the agent of %s (its pods end; the Node and pods stay)", name)
		a.cancel()
		select {
		case <-a.done:
		case <-time.After(60 * time.Second):
			return "error the agent of " + name + " did not stop within 60s"
		}
		a.cancel = nil
		return fmt.Sprintf("ok %s stopped (%.1fs)", name, time.Since(t0).Seconds())
	case op == "start-node" && a.cancel == nil:
		logf("fault hook: starting the agent of %s again", name)
		l.startAgent(a)
		return "ok " + name + " started"
	}
	return "error " + name + " is already " + map[string]string{"stop-node": "stopped", "start-node": "running"}[op]
}

// runAgent turns a panic of an agent into an error, so one node's bug does not take the
// launcher (and its cleanup) down.
func runAgent(ctx context.Context, cfg agent.Config) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return agent.Run(ctx, cfg)
}
