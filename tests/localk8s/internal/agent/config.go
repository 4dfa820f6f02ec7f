// Package agent is the localk8s node agent: a kubelet substitute on virtual-kubelet that runs
// pods as sandboxed local processes. The launcher (cmd/localk8s) starts one Run per node.
//
// This file is the contract between the launcher and the agent: the launcher fills Config;
// the agent may add fields (the launcher leaves new fields at their zero value until it knows
// them), but existing fields keep their meaning.
package agent

import "io"

// Config is everything one node agent needs from the launcher.
type Config struct {
	// NodeName is the Node object's name (e.g. "node-1"); the client cert is
	// system:node:<NodeName> in group system:nodes.
	NodeName string
	// Zone is the topology.kubernetes.io/zone label value (e.g. "zone-a").
	Zone string

	// KubeconfigPath is a kubeconfig using this node's client certificate.
	KubeconfigPath string
	// StateDir is a per-node directory (created by the launcher) for pod sandboxes, logs, etc.
	StateDir string
	// VolumesDir is the directory under which hostpath PersistentVolumes are provisioned
	// (DIR/volumes); PV paths point inside it.
	VolumesDir string

	// CNIConfPath is the CNI network configuration list (.conflist) the agent passes to the
	// plugins; CNIBinDir is where the plugins live (/usr/lib/cni on Debian).
	CNIConfPath string
	CNIBinDir   string
	// NetnsPrefix: every network namespace the agent creates is named NetnsPrefix+<something>
	// (e.g. "lk8s-" + a short pod/node id; keep the whole name under 64 bytes). After a crash,
	// `localk8s down` kills the processes in every netns with this prefix (`ip netns pids`) and
	// deletes the netns. The CNI conf's host-local IPAM dataDir is inside the launcher's state
	// dir, so IP allocations are reset with it.
	NetnsPrefix string

	// ClusterDNS is the DNS Service IP (10.96.0.10); ClusterDomain is "cluster.local".
	ClusterDNS    string
	ClusterDomain string

	// KubeletListenAddr is host:port for this node's kubelet API (logs/exec/port-forward),
	// e.g. "10.244.0.1:10250" for node 0, 10251 for node 1, ... The Node's InternalIP is the
	// host part and daemonEndpoints.kubeletEndpoint.Port the port.
	KubeletListenAddr string
	// KubeletCertFile/KubeletKeyFile: the serving certificate for KubeletListenAddr (signed by
	// the cluster CA; SANs include the listen IP and NodeName). ClientCAFile: the cluster CA,
	// used to verify the apiserver's client cert (CN=kube-apiserver-kubelet-client) on requests.
	KubeletCertFile string
	KubeletKeyFile  string
	ClientCAFile    string

	// Images maps an image repository (tag and digest ignored, e.g. "kvcache-node" or
	// "registry.example/kvcache-node") to the local program that plays its entrypoint.
	Images map[string]string

	// APIServerHost/APIServerPort is the apiserver address reachable from pods (the bridge's
	// host address and the secure port): the values of KUBERNETES_SERVICE_HOST/PORT are the
	// ClusterIP 10.96.0.1:443, these are for anything that must bypass the Service.
	APIServerHost string
	APIServerPort int

	// Added by the agent (zero values have defaults):
	// NodeIP overrides the Node's InternalIP and the pods' hostIP (default: the host part of
	// KubeletListenAddr). CPU, Memory, MaxPods are the Node's capacity and allocatable
	// (default "4", "8Gi", "110").
	NodeIP  string
	CPU     string
	Memory  string
	MaxPods string

	// Added by the launcher: LogWriter, if set, receives the agent's own log lines (the
	// launcher passes DIR/logs/<node>.log so its terminal shows only progress); nil means
	// os.Stderr.
	LogWriter io.Writer
}
