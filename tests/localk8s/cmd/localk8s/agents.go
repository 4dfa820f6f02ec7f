package main

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"kvcache.local/localk8s/internal/agent"
)

// startAgents runs one node agent per node in this process; an agent that returns an error
// before shutdown is restarted after 5 s.
func (l *launcher) startAgents() error {
	ctx, cancel := context.WithCancel(context.Background())
	l.agentsCancel = cancel
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
		l.agentsWG.Add(1)
		go func() {
			defer l.agentsWG.Done()
			for {
				err := runAgent(ctx, cfg)
				if ctx.Err() != nil {
					return
				}
				errf("node agent %s stopped: %v; restarting in 5s", cfg.NodeName, err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(5 * time.Second):
				}
			}
		}()
	}
	return nil
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
