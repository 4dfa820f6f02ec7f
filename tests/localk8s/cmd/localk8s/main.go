// Command localk8s runs a real Kubernetes control plane (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, kube-proxy, CoreDNS, built from pinned Go modules by
// tests/localk8s/upstream/build.sh) on one machine, with node agents that run pods as sandboxed
// local processes. See tests/localk8s/README.md and ../shared/LOCALK8S.md.
//
//	localk8s up --state-dir DIR [--nodes 3] [--bin-dir DIR] [--image REPO=PROGRAM ...]
//	localk8s down --state-dir DIR
//	localk8s restart --state-dir DIR apiserver|etcd|controller-manager|scheduler|kube-proxy|coredns
//	localk8s compact-etcd --state-dir DIR
//	localk8s apf-tighten --state-dir DIR [--undo]
//	localk8s kill-pod --state-dir DIR [-n NAMESPACE] POD
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Fixed addresses (LOCALK8S.md "Addresses"). One cluster per machine: the bridge name and the
// ranges are global.
const (
	bridgeName      = "kvcbr0"
	hostIP          = "10.244.0.1" // the bridge's address: apiserver, CoreDNS and kubelet APIs listen here
	bridgeCIDR      = hostIP + "/16"
	podCIDR         = "10.244.0.0/16"
	serviceCIDR     = "10.96.0.0/16"
	kubernetesSvcIP = "10.96.0.1"
	dnsIP           = "10.96.0.10"
	clusterDomain   = "cluster.local"
	apiPort         = 6443
	etcdClientPort  = 12379
	etcdPeerPort    = 12380
	kubeletBasePort = 10250
	netnsPrefix     = "lk8s-"
	cniBinDir       = "/usr/lib/cni"
	provisionerName = "localk8s.io/hostpath"
	hostNodeName    = "localk8s-host" // kube-proxy's --hostname-override (no Node object)
)

var zones = []string{"zone-a", "zone-b", "zone-c"}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  localk8s up --state-dir DIR [--nodes 3] [--bin-dir DIR] [--image REPO=PROGRAM ...]
      Runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, CoreDNS and
      N node agents in the foreground until SIGINT/SIGTERM; writes DIR/kubeconfig and prints
      "export KUBECONFIG=DIR/kubeconfig" when the cluster is ready. Objects persist in DIR/etcd.
  localk8s down --state-dir DIR
      Stops a running launcher on DIR, or cleans up what a crashed one left (processes,
      network namespaces, bridge, routes, iptables rules, sysctls).
  localk8s restart --state-dir DIR COMPONENT
      Fault hook: restarts one component of the running launcher (apiserver, etcd,
      controller-manager, scheduler, kube-proxy, coredns).
  localk8s compact-etcd --state-dir DIR
      Fault hook: compacts etcd at its current revision (older resourceVersions get 410 Gone).
  localk8s apf-tighten --state-dir DIR [--undo]
      Fault hook: a FlowSchema/PriorityLevelConfiguration giving user "localk8s-apf-test"
      (DIR/kubeconfig-apf-test) very few seats and Reject, so its clients get 429s.
  localk8s kill-pod --state-dir DIR [-n NAMESPACE] POD
      Fault hook: SIGKILLs the main process of every container of the pod from outside.
  localk8s stop-node --state-dir DIR NODE / start-node --state-dir DIR NODE
      Fault hook: stops a node's agent as if the machine were lost (its pods' processes end,
      heartbeats stop: the Node goes NotReady after 20 s, its pods unready; the objects
      stay), and starts it again (it runs the pods still bound to it).
`)
}

type imageFlags map[string]string

func (m imageFlags) String() string { return fmt.Sprint(map[string]string(m)) }
func (m imageFlags) Set(v string) error {
	k, p, ok := strings.Cut(v, "=")
	if !ok || k == "" || p == "" {
		return fmt.Errorf("want REPO=PROGRAM, got %q", v)
	}
	m[k] = p
	return nil
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	switch cmd {
	case "up":
		os.Exit(cmdUp(args))
	case "down":
		os.Exit(cmdDown(args))
	case "restart":
		os.Exit(cmdControl("restart", "component: apiserver, etcd, controller-manager, scheduler, kube-proxy, coredns", args))
	case "stop-node", "start-node":
		os.Exit(cmdControl(cmd, "node name (node-1 ... node-N)", args))
	case "compact-etcd":
		os.Exit(cmdCompact(args))
	case "apf-tighten":
		os.Exit(cmdAPF(args))
	case "kill-pod":
		os.Exit(cmdKillPod(args))
	case "-h", "--help", "help":
		usage()
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "localk8s: unknown command %q\n", cmd)
		usage()
		os.Exit(2)
	}
}

// stateDirFlag parses --state-dir (required) plus whatever extra flags the caller registered.
func parseWithStateDir(name string, args []string, fs *flag.FlagSet) (string, []string, bool) {
	dir := fs.String("state-dir", "", "state directory (required)")
	fs.Usage = func() {
		usage()
		fmt.Fprintf(os.Stderr, "\nflags of %s:\n", name)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return "", nil, false
	}
	if *dir == "" {
		fmt.Fprintf(os.Stderr, "localk8s %s: --state-dir is required\n", name)
		return "", nil, false
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "localk8s %s: %v\n", name, err)
		return "", nil, false
	}
	return abs, fs.Args(), true
}

func logf(format string, a ...any) {
	fmt.Printf("localk8s: "+format+"\n", a...)
}

func errf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "localk8s: "+format+"\n", a...)
}

func defaultBinDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "."
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	return filepath.Dir(exe)
}
