package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
)

// KubeletVersion is what the Node reports as its kubelet version (the control plane's).
var KubeletVersion = "v1.34.4"

func nodeResources(cfg Config) corev1.ResourceList {
	cpu, mem, pods := cfg.CPU, cfg.Memory, cfg.MaxPods
	if cpu == "" {
		cpu = "4"
	}
	if mem == "" {
		mem = "8Gi"
	}
	if pods == "" {
		pods = "110"
	}
	return corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse(cpu),
		corev1.ResourceMemory:           resource.MustParse(mem),
		corev1.ResourcePods:             resource.MustParse(pods),
		corev1.ResourceEphemeralStorage: resource.MustParse("20Gi"),
	}
}

// NodeObject builds the Node this agent registers.
func NodeObject(cfg Config, hostIP string, port int) *corev1.Node {
	res := nodeResources(cfg)
	lbl := map[string]string{
		"kubernetes.io/hostname":      cfg.NodeName,
		"kubernetes.io/os":            "linux",
		"kubernetes.io/arch":          runtime.GOARCH,
		"beta.kubernetes.io/os":       "linux",
		"node.kubernetes.io/localk8s": "true",
	}
	if cfg.Zone != "" {
		lbl["topology.kubernetes.io/zone"] = cfg.Zone
	}
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: cfg.NodeName, Labels: lbl},
		Status: corev1.NodeStatus{
			Capacity:    res,
			Allocatable: res.DeepCopy(),
			Phase:       corev1.NodeRunning,
			Conditions: []corev1.NodeCondition{
				cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "localk8s agent is posting ready status"),
				cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
				cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
				cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
				cond(corev1.NodeNetworkUnavailable, corev1.ConditionFalse, "RouteCreated", "bridge kvcbr0 is up"),
			},
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: hostIP},
				{Type: corev1.NodeHostName, Address: cfg.NodeName},
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(port)}},
			NodeInfo: corev1.NodeSystemInfo{
				KubeletVersion:          KubeletVersion,
				OperatingSystem:         "linux",
				Architecture:            runtime.GOARCH,
				ContainerRuntimeVersion: "localk8s://bwrap",
				OSImage:                 "localk8s sandboxed processes",
				KernelVersion:           kernelVersion(),
			},
		},
	}
}

func kernelVersion() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return string(b[:len(b)-1])
}

// Run runs one node agent until ctx is cancelled: registers the Node (Ready, Lease heartbeats),
// runs the pods bound to it, and serves the kubelet API. On return every pod process and
// sandbox of this node is stopped and removed (pod objects are left to the apiserver).
func Run(ctx context.Context, cfg Config) error {
	if cfg.NodeName == "" || cfg.KubeconfigPath == "" || cfg.StateDir == "" {
		return fmt.Errorf("agent: NodeName, KubeconfigPath and StateDir are required")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.KubeconfigPath)
	if err != nil {
		return fmt.Errorf("agent %s: kubeconfig: %w", cfg.NodeName, err)
	}
	rc.QPS, rc.Burst = 50, 100
	rc.UserAgent = "localk8s-agent/" + cfg.NodeName
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	host, portStr, err := net.SplitHostPort(cfg.KubeletListenAddr)
	if err != nil {
		return fmt.Errorf("agent %s: KubeletListenAddr %q: %w", cfg.NodeName, cfg.KubeletListenAddr, err)
	}
	port, _ := strconv.Atoi(portStr)
	hostIP := host
	if cfg.NodeIP != "" {
		hostIP = cfg.NodeIP
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	provCtx, provCancel := context.WithCancel(context.Background())
	defer provCancel()
	p := NewProvider(provCtx, cfg, client, hostIP)
	p.CleanupLeftovers()
	defer func() {
		p.logf("stopping: shutting down all pods")
		p.Shutdown(2 * time.Second)
		p.CleanupLeftovers()
	}()

	eb := record.NewBroadcaster()
	eb.StartRecordingToSink(&corev1client.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer eb.Shutdown()
	p.recorder = eb.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: cfg.NodeName})

	podFactory := informers.NewSharedInformerFactoryWithOptions(client, time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
		}))
	podInformer := podFactory.Core().V1().Pods()
	p.podFromAPI = func(ns, name string) (*corev1.Pod, error) { return podInformer.Lister().Pods(ns).Get(name) }
	podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(o, n any) {
			op, ok1 := o.(*corev1.Pod)
			np, ok2 := n.(*corev1.Pod)
			if ok1 && ok2 {
				p.ReadinessGatesChanged(op, np)
			}
		},
		DeleteFunc: func(o any) {
			if tomb, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = tomb.Obj
			}
			if pod, ok := o.(*corev1.Pod); ok {
				p.PodObjectDeleted(pod)
			}
		},
	})
	// The pod controller insists on these informers but only uses them to resolve env, which
	// this provider does itself (SkipDownwardAPIResolution): they are never started, so the
	// node's credentials are never used to list all Secrets (the Node authorizer forbids it).
	unused := informers.NewSharedInformerFactory(client, 0)

	pc, err := node.NewPodController(node.PodControllerConfig{
		PodClient:                 client.CoreV1(),
		PodInformer:               podInformer,
		EventRecorder:             p.recorder,
		Provider:                  p,
		ConfigMapInformer:         unused.Core().V1().ConfigMaps(),
		SecretInformer:            unused.Core().V1().Secrets(),
		ServiceInformer:           unused.Core().V1().Services(),
		SkipDownwardAPIResolution: true,
	})
	if err != nil {
		return err
	}
	nodeObj := NodeObject(cfg, hostIP, port)
	nc, err := node.NewNodeController(node.NewNaiveNodeProvider(), nodeObj, client.CoreV1().Nodes(),
		node.WithNodeEnableLeaseV1(client.CoordinationV1().Leases(corev1.NamespaceNodeLease), 20),
		node.WithNodeStatusUpdateInterval(20*time.Second))
	if err != nil {
		return err
	}

	// kubelet API
	srvErr := make(chan error, 1)
	if cfg.KubeletCertFile != "" {
		srv, err := kubeletServer(cfg, p, podInformer.Lister().List)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", cfg.KubeletListenAddr)
		if err != nil {
			return fmt.Errorf("agent %s: kubelet API listen: %w", cfg.NodeName, err)
		}
		go func() { srvErr <- srv.ServeTLS(ln, "", "") }()
		defer srv.Close()
	}

	// Services for service-link env vars (the Node authorizer lets nodes list/watch Services)
	svcFactory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	svcLister := svcFactory.Core().V1().Services().Lister()
	p.services = func(ns string) ([]*corev1.Service, error) { return svcLister.Services(ns).List(labels.Everything()) }
	go svcFactory.Start(ctx.Done())
	go podFactory.Start(ctx.Done())
	svcFactory.WaitForCacheSync(ctx.Done())
	pcDone := make(chan error, 1)
	go func() { pcDone <- pc.Run(ctx, 2) }()
	select {
	case <-pc.Ready():
	case err := <-pcDone:
		return fmt.Errorf("agent %s: pod controller: %w", cfg.NodeName, err)
	case <-ctx.Done():
		return nil
	}
	ncDone := make(chan error, 1)
	go func() { ncDone <- nc.Run(ctx) }()
	p.logf("node %s: pod controller ready; registering node (InternalIP %s, kubelet port %d)", cfg.NodeName, hostIP, port)

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-pcDone:
		runErr = fmt.Errorf("agent %s: pod controller stopped: %v", cfg.NodeName, err)
	case err := <-ncDone:
		runErr = fmt.Errorf("agent %s: node controller stopped: %v", cfg.NodeName, err)
	case err := <-srvErr:
		runErr = fmt.Errorf("agent %s: kubelet API: %v", cfg.NodeName, err)
	}
	cancel()
	return runErr
}

// kubeletServer builds the TLS kubelet API (logs, exec, port-forward) that only accepts
// client certificates signed by cfg.ClientCAFile (the apiserver's kubelet client cert).
func kubeletServer(cfg Config, p *Provider, listPods func(labels.Selector) ([]*corev1.Pod, error)) (*http.Server, error) {
	cert, err := tls.LoadX509KeyPair(cfg.KubeletCertFile, cfg.KubeletKeyFile)
	if err != nil {
		return nil, fmt.Errorf("kubelet serving cert: %w", err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert}
	if cfg.ClientCAFile != "" {
		pem, err := os.ReadFile(cfg.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("kubelet client CA: %w", err)
		}
		tc.ClientCAs = x509.NewCertPool()
		if !tc.ClientCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kubelet client CA %s: no certificates", cfg.ClientCAFile)
		}
	} else {
		tc.ClientAuth = tls.RequestClientCert
	}
	h := api.PodHandler(api.PodHandlerConfig{
		RunInContainer:    p.RunInContainer,
		AttachToContainer: p.AttachToContainer,
		GetContainerLogs:  p.GetContainerLogs,
		PortForward:       p.PortForward,
		GetPods:           p.GetPods,
		GetPodsFromKubernetes: func(context.Context) ([]*corev1.Pod, error) {
			return listPods(labels.Everything())
		},
		StreamIdleTimeout:     4 * time.Hour,
		StreamCreationTimeout: 30 * time.Second,
	}, false)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
	mux.Handle("/", h)
	return &http.Server{Handler: mux, TLSConfig: tc, ReadHeaderTimeout: 30 * time.Second}, nil
}
