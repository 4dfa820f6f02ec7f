package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

type launcher struct {
	dir    string
	binDir string
	nodes  []string
	images map[string]string
	// auditPolicy: the --audit-policy file; empty = defaultAuditPolicy.
	auditPolicy string
	st          *stateFile
	pki         *pki
	cniConf     string

	procs  []*proc
	byName map[string]*proc

	restCfg *rest.Config
	client  kubernetes.Interface
	dyn     dynamic.Interface

	bgCancel     context.CancelFunc
	bgWG         sync.WaitGroup
	agentsWG     sync.WaitGroup
	agentsCtx    context.Context
	agentsCancel context.CancelFunc
	agentsMu     sync.Mutex // serialises the stop-node / start-node hooks
	agents       map[string]*nodeAgent
	listeners    []net.Listener
	started      time.Time
}

var upstreamBins = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "coredns"}

func cmdUp(args []string) int {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	nodes := fs.Int("nodes", 3, "number of node agents (node-1..node-N, zones zone-a/b/c in turn)")
	binDir := fs.String("bin-dir", defaultBinDir(), "directory of the upstream binaries (etcd, kube-apiserver, ...)")
	images := imageFlags{}
	fs.Var(images, "image", "REPO=PROGRAM: run PROGRAM for pods whose image repository is REPO (repeatable)")
	auditPolicy := fs.String("audit-policy", "", "kube-apiserver audit policy file (default: Metadata level for service accounts outside kube-system); the log is DIR/logs/audit.log")
	dir, rest, ok := parseWithStateDir("up", args, fs)
	if !ok {
		return 2
	}
	if len(rest) > 0 || *nodes < 0 {
		usage()
		return 2
	}
	if os.Geteuid() != 0 {
		errf("up must run as root (it creates a bridge, routes, iptables rules and network namespaces)")
		return 1
	}
	bd, _ := filepath.Abs(*binDir)
	for _, b := range upstreamBins {
		if _, err := os.Stat(filepath.Join(bd, b)); err != nil {
			errf("%s not found in %s (build them with tests/localk8s/upstream/build.sh %s, or pass --bin-dir)", b, bd, bd)
			return 1
		}
	}
	if err := preflight(*nodes); err != nil {
		errf("%v", err)
		return 1
	}
	img := defaultImages(bd)
	for k, v := range images {
		if !strings.Contains(v, "/") {
			if p, err := filepath.Abs(v); err == nil {
				if _, err := os.Stat(p); err == nil {
					v = p
				}
			}
		}
		img[k] = v
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		errf("%v", err)
		return 1
	}
	unlock, err := lockDir(dir)
	if err != nil {
		errf("%v", err)
		return 1
	}
	defer unlock()
	if old, err := loadState(dir); err == nil {
		if old.Launcher.alive() {
			errf("a launcher (pid %d) is already running on %s", old.Launcher.PID, dir)
			return 1
		}
		logf("cleaning up after a previous run that did not stop cleanly")
		if probs := cleanupState(old, bd); len(probs) > 0 {
			errf("cleanup problems: %s", strings.Join(probs, "; "))
		}
	}
	// client-go and the in-process agents log through klog: into DIR/logs/launcher.log.
	kf := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(kf)
	_ = kf.Set("logtostderr", "false")
	_ = kf.Set("alsologtostderr", "false")
	_ = kf.Set("stderrthreshold", "FATAL")
	if lf, err := os.OpenFile(filepath.Join(dir, "logs", "launcher.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		klog.SetOutput(lf)
		defer lf.Close()
	}

	l := &launcher{dir: dir, binDir: bd, images: img, auditPolicy: *auditPolicy, byName: map[string]*proc{}}
	for i := 1; i <= *nodes; i++ {
		l.nodes = append(l.nodes, fmt.Sprintf("node-%d", i))
	}
	l.st = &stateFile{path: filepath.Join(dir, "state.json"), s: State{
		Launcher: selfRef("localk8s"), BinDir: bd, Procs: map[string]ProcRef{}, NetnsPrefix: netnsPrefix,
	}}
	l.st.update(func(*State) {})
	_ = os.Remove(filepath.Join(dir, "kubeconfig"))

	// stdout may be a pipe whose reader goes away: that must not kill the launcher mid-run.
	// Caught (not ignored), so the components and pods still start with SIGPIPE at default.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	t0 := time.Now()
	l.started = t0.Add(-time.Second) // heartbeat times have 1 s resolution
	runErr := l.run(ctx, t0)
	if runErr != nil && ctx.Err() == nil {
		errf("FAILED: %v", runErr)
	}
	stop()
	// A second Ctrl-C must not interrupt the cleanup half-way.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	logf("stopping... (further SIGINT/SIGTERM are ignored until the host is clean)")
	probs := l.shutdown()
	if len(probs) > 0 {
		errf("cleanup problems: %s", strings.Join(probs, "; "))
	} else {
		_ = os.Remove(l.st.path)
	}
	logf("stopped; host network state restored")
	if runErr != nil && !errors.Is(runErr, context.Canceled) {
		return 1
	}
	if len(probs) > 0 {
		return 1
	}
	return 0
}

// defaultImages maps the project's own images to the binaries `make build` puts beside
// localk8s: any image whose repository's last element is kvcache-node or kvcache-operator
// (whatever the registry, path or tag). A binary that is not built yet leaves the pod's container
// Waiting with ErrImagePull saying so.
func defaultImages(binDir string) map[string]string {
	img := map[string]string{}
	for _, n := range []string{"kvcache-node", "kvcache-operator"} {
		img[n] = filepath.Join(binDir, n)
	}
	return img
}

func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s is in use by another localk8s up/down", dir)
	}
	return func() { f.Close() }, nil
}

func (l *launcher) path(p ...string) string { return filepath.Join(append([]string{l.dir}, p...)...) }

func (l *launcher) addProc(name, bin string, args ...string) *proc {
	p := &proc{name: name, path: filepath.Join(l.binDir, bin), args: args, logPath: l.path("logs", name+".log"), st: l.st}
	l.procs = append(l.procs, p)
	l.byName[name] = p
	return p
}

func (l *launcher) run(ctx context.Context, t0 time.Time) error {
	logf("state dir %s, %d node(s), binaries from %s", l.dir, len(l.nodes), l.binDir)
	var err error
	logf("certificates and kubeconfigs...")
	if l.pki, err = setupPKI(l.dir, l.nodes); err != nil {
		return err
	}
	logf("host network: bridge %s %s, route %s, ip_forward, iptables isolation...", bridgeName, bridgeCIDR, serviceCIDR)
	if l.cniConf, err = setupNetwork(l.dir, l.st); err != nil {
		return err
	}
	if err := l.writeConfigs(); err != nil {
		return err
	}
	for _, d := range []string{"etcd", "volumes", "nodes"} {
		if err := os.MkdirAll(l.path(d), 0o755); err != nil {
			return err
		}
	}
	_ = os.Chmod(l.path("etcd"), 0o700)

	audit, err := auditArgs(l.dir, l.auditPolicy)
	if err != nil {
		return err
	}
	pk := l.pki.path
	kc := func(n string) string { return l.path("kubeconfigs", n+".kubeconfig") }
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeerPort)
	etcd := l.addProc("etcd", "etcd", "--name", "localk8s", "--data-dir", l.path("etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "localk8s="+peerURL, "--listen-metrics-urls", "",
		"--quota-backend-bytes", "4294967296", "--log-level", "warn")
	apiserverArgs := []string{
		"--etcd-servers", etcdURL,
		"--bind-address", hostIP, "--advertise-address", hostIP, "--secure-port", fmt.Sprint(apiPort),
		"--tls-cert-file", pk("apiserver.crt"), "--tls-private-key-file", pk("apiserver.key"),
		"--client-ca-file", pk("ca.crt"),
		"--kubelet-client-certificate", pk("apiserver-kubelet-client.crt"), "--kubelet-client-key", pk("apiserver-kubelet-client.key"),
		"--requestheader-client-ca-file", pk("ca.crt"), "--requestheader-allowed-names", "front-proxy-client",
		"--requestheader-username-headers", "X-Remote-User", "--requestheader-group-headers", "X-Remote-Group",
		"--requestheader-extra-headers-prefix", "X-Remote-Extra-",
		"--proxy-client-cert-file", pk("front-proxy-client.crt"), "--proxy-client-key-file", pk("front-proxy-client.key"),
		"--kubelet-certificate-authority", pk("ca.crt"), "--kubelet-preferred-address-types", "InternalIP,Hostname",
		"--service-cluster-ip-range", serviceCIDR,
		"--service-account-issuer", "https://kubernetes.default.svc." + clusterDomain,
		"--service-account-key-file", pk("sa.pub"), "--service-account-signing-key-file", pk("sa.key"),
		"--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
		"--allow-privileged=true", "--profiling=false", "--v=1"}
	apiserver := l.addProc("apiserver", "kube-apiserver", append(apiserverArgs, audit...)...)
	cm := l.addProc("controller-manager", "kube-controller-manager",
		"--kubeconfig", kc("controller-manager"), "--authentication-kubeconfig", kc("controller-manager"),
		"--authorization-kubeconfig", kc("controller-manager"),
		"--bind-address", "127.0.0.1", "--secure-port", "20257", "--leader-elect=false",
		"--service-account-private-key-file", pk("sa.key"), "--root-ca-file", pk("ca.crt"),
		"--use-service-account-credentials",
		"--cluster-signing-cert-file", pk("ca.crt"), "--cluster-signing-key-file", pk("ca.key"),
		"--service-cluster-ip-range", serviceCIDR, "--cluster-cidr", podCIDR, "--allocate-node-cidrs=false",
		// A lost node (the stop-node hook) turns NotReady, and its pods unready, 20 s after
		// its last heartbeat instead of the default 50 s; the agents renew their Lease every
		// 5 s (20 s Leases), so a busy machine still has four renewals of margin.
		"--node-monitor-grace-period=20s",
		"--profiling=false", "--v=1")
	sched := l.addProc("scheduler", "kube-scheduler",
		"--kubeconfig", kc("scheduler"), "--authentication-kubeconfig", kc("scheduler"),
		"--authorization-kubeconfig", kc("scheduler"),
		"--bind-address", "127.0.0.1", "--secure-port", "20259", "--leader-elect=false", "--profiling=false", "--v=1")
	kproxy := l.addProc("kube-proxy", "kube-proxy", "--config", l.path("config", "kube-proxy.yaml"), "--v=1")
	coredns := l.addProc("coredns", "coredns", "-conf", l.path("config", "Corefile"))

	logf("starting etcd...")
	if err := etcd.start(); err != nil {
		return err
	}
	if err := waitFor(ctx, "etcd", 60*time.Second, func(ctx context.Context) (bool, string) {
		return httpOK(ctx, etcdURL+"/health", `"health":"true"`)
	}); err != nil {
		return err
	}
	logf("starting kube-apiserver...")
	if err := apiserver.start(); err != nil {
		return err
	}
	if err := l.connect(); err != nil {
		return err
	}
	if err := waitFor(ctx, "apiserver /readyz", 120*time.Second, l.apiReady); err != nil {
		return err
	}
	logf("cluster objects (kube-dns Service, StorageClass standard, RBAC)...")
	if err := l.bootstrap(ctx); err != nil {
		return err
	}
	logf("starting kube-controller-manager, kube-scheduler...")
	if err := cm.start(); err != nil {
		return err
	}
	if err := sched.start(); err != nil {
		return err
	}
	logf("starting kube-proxy (iptables), coredns on %s:53...", hostIP)
	l.st.update(func(s *State) { s.KubeProxy = true })
	if err := l.startKubeProxy(ctx, kproxy); err != nil {
		return err
	}
	if err := coredns.start(); err != nil {
		return err
	}

	bg, cancel := context.WithCancel(context.Background())
	l.bgCancel = cancel
	if err := l.startForwarder(bg); err != nil {
		return err
	}
	if err := l.startControl(bg); err != nil {
		return err
	}
	l.bgWG.Add(1)
	go func() { defer l.bgWG.Done(); l.runProvisioner(bg) }()

	if len(l.nodes) > 0 {
		logf("starting %d node agent(s)...", len(l.nodes))
		if err := l.startAgents(); err != nil {
			return err
		}
		if err := waitFor(ctx, fmt.Sprintf("%d node(s)", len(l.nodes)), 120*time.Second, l.nodesReady); err != nil {
			return err
		}
	}
	if err := waitFor(ctx, "DNS "+dnsIP+" (kubernetes.default.svc."+clusterDomain+")", 90*time.Second, dnsReady); err != nil {
		return err
	}
	admin := l.path("kubeconfig")
	if err := l.pki.kubeconfig(admin, fmt.Sprintf("https://127.0.0.1:%d", apiPort), "admin"); err != nil {
		return err
	}
	if err := l.pki.kubeconfig(l.path("kubeconfig-apf-test"), fmt.Sprintf("https://127.0.0.1:%d", apiPort), "apf-test"); err != nil {
		return err
	}
	logf("cluster ready in %.1fs (apiserver https://127.0.0.1:%d and https://%s:%d; logs in %s)",
		time.Since(t0).Seconds(), apiPort, hostIP, apiPort, l.path("logs"))
	fmt.Printf("export KUBECONFIG=%s\n", admin)
	<-ctx.Done()
	return nil
}

func (l *launcher) writeConfigs() error {
	cfg := l.path("config")
	if err := os.MkdirAll(cfg, 0o755); err != nil {
		return err
	}
	kp := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
mode: iptables
hostnameOverride: %s
bindAddress: %s
healthzBindAddress: 127.0.0.1:20256
metricsBindAddress: 127.0.0.1:20249
clusterCIDR: %s
detectLocalMode: ClusterCIDR
nodePortAddresses: ["127.0.0.1/32", "%s/32"]
iptables:
  localhostNodePorts: true
  masqueradeAll: false
  syncPeriod: 30s
  minSyncPeriod: 1s
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, l.path("kubeconfigs", "kube-proxy.kubeconfig"), hostNodeName, hostIP, podCIDR, hostIP)
	if err := os.WriteFile(filepath.Join(cfg, "kube-proxy.yaml"), []byte(kp), 0o644); err != nil {
		return err
	}
	cf := fmt.Sprintf(`.:53 {
    bind %s
    errors
    health 127.0.0.1:20280
    ready 127.0.0.1:20281
    kubernetes %s in-addr.arpa ip6.arpa {
        kubeconfig %s
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    cache 30
}
`, hostIP, clusterDomain, l.path("kubeconfigs", "coredns.kubeconfig"))
	return os.WriteFile(filepath.Join(cfg, "Corefile"), []byte(cf), 0o644)
}

func (l *launcher) connect() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", l.path("kubeconfigs", "admin.kubeconfig"))
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 50, 100
	cfg.UserAgent = "localk8s"
	l.restCfg = cfg
	if l.client, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	l.dyn, err = dynamic.NewForConfig(cfg)
	return err
}

func (l *launcher) apiReady(ctx context.Context) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	b, err := l.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		return false, firstLine(err.Error())
	}
	return strings.TrimSpace(string(b)) == "ok", ""
}

func (l *launcher) nodesReady(ctx context.Context) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	list, err := l.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, firstLine(err.Error())
	}
	// A Node from a previous run is still Ready in etcd: only a heartbeat from this run counts
	// (the node's Lease renewed, or its Ready condition posted, after the launcher started).
	fresh := map[string]bool{}
	if leases, err := l.client.CoordinationV1().Leases("kube-node-lease").List(ctx, metav1.ListOptions{}); err == nil {
		for _, le := range leases.Items {
			if le.Spec.RenewTime != nil && le.Spec.RenewTime.Time.After(l.started) {
				fresh[le.Name] = true
			}
		}
	}
	ready := map[string]bool{}
	for _, n := range list.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue &&
				(fresh[n.Name] || c.LastHeartbeatTime.Time.After(l.started)) {
				ready[n.Name] = true
			}
		}
	}
	var missing []string
	for _, n := range l.nodes {
		if !ready[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return false, "not Ready: " + strings.Join(missing, ",")
	}
	return true, ""
}

func dnsReady(ctx context.Context) (bool, string) {
	ips, err := lookup(ctx, "kubernetes.default.svc."+clusterDomain)
	if err != nil {
		return false, firstLine(err.Error())
	}
	for _, ip := range ips {
		if ip == kubernetesSvcIP {
			return true, ""
		}
	}
	return false, fmt.Sprintf("got %v", ips)
}

// lookup asks the cluster DNS Service (through kube-proxy's DNAT) directly.
func lookup(ctx context.Context, name string) ([]string, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort(dnsIP, "53"))
	}}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return r.LookupHost(ctx, name+".")
}

func httpOK(ctx context.Context, url, want string) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, firstLine(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode == 200 && strings.Contains(string(b), want), ""
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// waitFor polls check until it reports ready, printing progress every 3 s.
func waitFor(ctx context.Context, what string, timeout time.Duration, check func(context.Context) (bool, string)) error {
	start := time.Now()
	next := 3 * time.Second
	for {
		ok, detail := check(ctx)
		if ok {
			logf("%s: ready (%.1fs)", what, time.Since(start).Seconds())
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		el := time.Since(start)
		if el > timeout {
			return fmt.Errorf("timed out after %v waiting for %s (last: %s)", timeout, what, detail)
		}
		if el >= next {
			if detail != "" {
				detail = ": " + detail
			}
			logf("waiting for %s (%ds)%s", what, int(el.Seconds()), detail)
			next += 3 * time.Second
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// startKubeProxy starts kube-proxy. kube-proxy waits up to 30 s for the Node named by its
// hostnameOverride to exist with an address before it programs anything; the host's kube-proxy
// serves every node, so a Node localk8s-host (unschedulable, tainted) exists only until
// kube-proxy is past that wait, and is deleted again.
func (l *launcher) startKubeProxy(ctx context.Context, p *proc) error {
	nodes := l.client.CoreV1().Nodes()
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: hostNodeName, Labels: map[string]string{"localk8s.io/transient": "true"}},
		Spec: corev1.NodeSpec{Unschedulable: true, Taints: []corev1.Taint{
			{Key: "localk8s.io/host", Effect: corev1.TaintEffectNoSchedule},
			{Key: "localk8s.io/host", Effect: corev1.TaintEffectNoExecute},
		}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: hostIP}}},
	}
	_ = nodes.Delete(ctx, hostNodeName, metav1.DeleteOptions{})
	if _, err := nodes.Create(ctx, n, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating transient Node %s for kube-proxy: %w", hostNodeName, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = nodes.Delete(dctx, hostNodeName, metav1.DeleteOptions{})
	}()
	if err := p.start(); err != nil {
		return err
	}
	return waitFor(ctx, "kube-proxy", 60*time.Second, func(ctx context.Context) (bool, string) {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://127.0.0.1:20256/healthz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, firstLine(err.Error())
		}
		resp.Body.Close()
		return true, ""
	})
}

// startForwarder serves the apiserver on 127.0.0.1:6443 too (the apiserver binds one address,
// the bridge's, which pods and the kubernetes Service need).
func (l *launcher) startForwarder(ctx context.Context) error {
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", apiPort))
	if err != nil {
		return fmt.Errorf("listening on 127.0.0.1:%d for the apiserver: %w", apiPort, err)
	}
	l.listeners = append(l.listeners, ln)
	target := net.JoinHostPort(hostIP, fmt.Sprint(apiPort))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					return
				}
				defer u.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(u, c); u.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
				go func() { io.Copy(c, u); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
				select {
				case <-done:
					<-done
				case <-ctx.Done():
				}
			}()
		}
	}()
	return nil
}

// shutdown stops everything in reverse order and restores the host; safe after a partial start.
func (l *launcher) shutdown() []string {
	if l.agentsCancel != nil {
		logf("stopping node agents...")
		l.agentsCancel()
		done := make(chan struct{})
		go func() { l.agentsWG.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			errf("node agents did not stop within 60s")
		}
	}
	if l.bgCancel != nil {
		l.bgCancel()
	}
	for _, ln := range l.listeners {
		ln.Close()
	}
	l.bgWG.Wait()
	for i := len(l.procs) - 1; i >= 0; i-- {
		p := l.procs[i]
		if p.pid() != 0 {
			logf("stopping %s...", p.name)
		}
		p.stop(20 * time.Second)
	}
	_ = os.Remove(l.path("control.sock"))
	l.st.mu.Lock()
	s := l.st.s
	l.st.mu.Unlock()
	// anything recorded but not stopped above (should not happen)
	for _, r := range s.Procs {
		killRef(r)
	}
	logf("removing host network state (kube-proxy --cleanup, netns, bridge, routes, rules, sysctls)...")
	probs := teardownNetwork(&s, l.binDir)
	_ = os.Remove(l.path("kubeconfig"))
	_ = os.Remove(l.path("kubeconfig-apf-test"))
	return probs
}

// cleanupState undoes a crashed launcher's leftovers.
func cleanupState(s *State, binDir string) []string {
	// clients before the apiserver, the apiserver before etcd (etcd waits for its clients)
	order := []string{"coredns", "kube-proxy", "scheduler", "controller-manager", "apiserver", "etcd"}
	for _, n := range order {
		if r, ok := s.Procs[n]; ok {
			killRef(r)
		}
	}
	for n, r := range s.Procs {
		if !slices.Contains(order, n) {
			killRef(r)
		}
	}
	if s.BinDir != "" {
		binDir = s.BinDir
	}
	return teardownNetwork(s, binDir)
}

func cmdDown(args []string) int {
	fs := flag.NewFlagSet("down", flag.ContinueOnError)
	dir, _, ok := parseWithStateDir("down", args, fs)
	if !ok {
		return 2
	}
	s, err := loadState(dir)
	if errors.Is(err, os.ErrNotExist) {
		logf("nothing to clean up in %s", dir)
		return 0
	} else if err != nil {
		errf("%v", err)
		return 1
	}
	if s.Launcher.alive() {
		logf("stopping the launcher (pid %d)...", s.Launcher.PID)
		_ = syscall.Kill(s.Launcher.PID, syscall.SIGTERM)
		for i := 0; i < 1200 && s.Launcher.alive(); i++ {
			time.Sleep(100 * time.Millisecond)
		}
		if s.Launcher.alive() {
			errf("launcher did not stop within 120s; killing it")
			_ = syscall.Kill(s.Launcher.PID, syscall.SIGKILL)
			time.Sleep(500 * time.Millisecond)
		}
		if s, err = loadState(dir); errors.Is(err, os.ErrNotExist) {
			logf("stopped")
			return 0
		} else if err != nil {
			errf("%v", err)
			return 1
		}
	}
	unlock, err := lockDir(dir)
	if err != nil {
		errf("%v", err)
		return 1
	}
	defer unlock()
	logf("cleaning up what the launcher left (processes, netns, kube-proxy rules, bridge, routes, sysctls)...")
	if probs := cleanupState(s, defaultBinDir()); len(probs) > 0 {
		errf("cleanup problems: %s", strings.Join(probs, "; "))
		return 1
	}
	_ = os.Remove(filepath.Join(dir, "state.json"))
	_ = os.Remove(filepath.Join(dir, "control.sock"))
	_ = os.Remove(filepath.Join(dir, "kubeconfig"))
	logf("clean")
	return 0
}

// preflight checks the host tools (Debian packages iproute2, iptables, containernetworking-plugins,
// bubblewrap) before anything is changed.
func preflight(nodes int) error {
	var missing []string
	for _, t := range []string{"ip", "iptables", "iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if nodes > 0 {
		for _, p := range []string{cniBinDir + "/bridge", cniBinDir + "/host-local"} {
			if _, err := os.Stat(p); err != nil {
				missing = append(missing, p)
			}
		}
		if _, err := exec.LookPath("bwrap"); err != nil {
			missing = append(missing, "bwrap")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing on this host: %s (Debian packages: iproute2 iptables containernetworking-plugins bubblewrap)",
			strings.Join(missing, ", "))
	}
	return nil
}
