package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Fault hooks. `restart` talks to the running launcher over DIR/control.sock (one request line,
// one reply line: "ok ..." or "error ..."); compact-etcd and apf-tighten act directly.

var componentAliases = map[string]string{
	"apiserver": "apiserver", "kube-apiserver": "apiserver",
	"etcd":               "etcd",
	"controller-manager": "controller-manager", "kube-controller-manager": "controller-manager",
	"scheduler": "scheduler", "kube-scheduler": "scheduler",
	"kube-proxy": "kube-proxy", "proxy": "kube-proxy",
	"coredns": "coredns", "dns": "coredns",
}

func (l *launcher) startControl(ctx context.Context) error {
	sock := l.path("control.sock")
	_ = os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	_ = os.Chmod(sock, 0o600)
	l.listeners = append(l.listeners, ln)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				reply := l.control(ctx, strings.Fields(line))
				fmt.Fprintln(c, reply)
			}()
		}
	}()
	return nil
}

func (l *launcher) control(ctx context.Context, req []string) string {
	if len(req) == 2 && (req[0] == "stop-node" || req[0] == "start-node") {
		return l.nodeHook(req[0], req[1])
	}
	if len(req) == 2 && req[0] == "restart" {
		name, ok := componentAliases[req[1]]
		p := l.byName[name]
		if !ok || p == nil {
			return "error unknown component " + req[1]
		}
		t0 := time.Now()
		logf("fault hook: restarting %s", name)
		var err error
		if name == "kube-proxy" {
			p.stop(5 * time.Second)
			err = l.startKubeProxy(ctx, p)
		} else {
			err = p.restart()
		}
		if err != nil {
			return "error " + err.Error()
		}
		wctx, cancel := context.WithTimeout(ctx, 120*time.Second)
		defer cancel()
		switch name {
		case "etcd":
			err = waitFor(wctx, "etcd", 60*time.Second, func(ctx context.Context) (bool, string) {
				return httpOK(ctx, fmt.Sprintf("http://127.0.0.1:%d/health", etcdClientPort), `"health":"true"`)
			})
			if err == nil {
				err = waitFor(wctx, "apiserver /readyz", 60*time.Second, l.apiReady)
			}
		case "apiserver":
			err = waitFor(wctx, "apiserver /readyz", 60*time.Second, l.apiReady)
		}
		if err != nil {
			return "error " + err.Error()
		}
		return fmt.Sprintf("ok %s restarted (%.1fs)", name, time.Since(t0).Seconds())
	}
	return "error unknown request " + strings.Join(req, " ")
}

// cmdControl sends `name ARG` to the running launcher's control socket (restart, stop-node,
// start-node) and prints its reply.
func cmdControl(name, want string, args []string) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	dir, rest, ok := parseWithStateDir(name, args, fs)
	if !ok || len(rest) != 1 {
		if ok {
			errf("%s: want one %s", name, want)
		}
		return 2
	}
	c, err := net.Dial("unix", filepath.Join(dir, "control.sock"))
	if err != nil {
		errf("no running launcher on %s: %v", dir, err)
		return 1
	}
	defer c.Close()
	fmt.Fprintf(c, "%s %s\n", name, rest[0])
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		errf("%v", err)
		return 1
	}
	reply = strings.TrimSpace(reply)
	if strings.HasPrefix(reply, "ok") {
		logf("%s", strings.TrimPrefix(reply, "ok "))
		return 0
	}
	errf("%s", strings.TrimPrefix(reply, "error "))
	return 1
}

func etcdctl(dir string, args ...string) (string, error) {
	bin := filepath.Join(defaultBinDir(), "etcdctl")
	if s, err := loadState(dir); err == nil && s.BinDir != "" {
		bin = filepath.Join(s.BinDir, "etcdctl")
	}
	cmd := exec.Command(bin, append([]string{fmt.Sprintf("--endpoints=http://127.0.0.1:%d", etcdClientPort)}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("etcdctl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

func cmdCompact(args []string) int {
	fs := flag.NewFlagSet("compact-etcd", flag.ContinueOnError)
	dir, _, ok := parseWithStateDir("compact-etcd", args, fs)
	if !ok {
		return 2
	}
	out, err := etcdctl(dir, "endpoint", "status", "-w", "json")
	if err != nil {
		errf("%v", err)
		return 1
	}
	var st []struct {
		Status struct {
			Header struct {
				Revision int64 `json:"revision"`
			} `json:"header"`
		} `json:"Status"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st) == 0 || st[0].Status.Header.Revision == 0 {
		errf("cannot read etcd revision from %q: %v", out, err)
		return 1
	}
	rev := st[0].Status.Header.Revision
	if _, err := etcdctl(dir, "compact", fmt.Sprint(rev), "--physical"); err != nil &&
		!strings.Contains(err.Error(), "required revision has been compacted") {
		errf("%v", err)
		return 1
	}
	logf("etcd compacted at revision %d (resourceVersions below it now get 410 Gone)", rev)
	return 0
}

var apfManifest = `
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: PriorityLevelConfiguration
metadata: {name: localk8s-tight, labels: {app.kubernetes.io/managed-by: localk8s}}
spec:
  type: Limited
  limited:
    nominalConcurrencyShares: 1
    lendablePercent: 0
    borrowingLimitPercent: 0
    limitResponse: {type: Reject}
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {name: localk8s-tight, labels: {app.kubernetes.io/managed-by: localk8s}}
spec:
  priorityLevelConfiguration: {name: localk8s-tight}
  matchingPrecedence: 50
  distinguisherMethod: {type: ByUser}
  rules:
  - subjects:
    - {kind: User, user: {name: localk8s-apf-test}}
    - {kind: Group, group: {name: "localk8s:apf-test"}}
    resourceRules:
    - {verbs: ["*"], apiGroups: ["*"], resources: ["*"], namespaces: ["*"], clusterScope: true}
    nonResourceRules:
    - {verbs: ["*"], nonResourceURLs: ["*"]}
`

func cmdAPF(args []string) int {
	fs := flag.NewFlagSet("apf-tighten", flag.ContinueOnError)
	undo := fs.Bool("undo", false, "remove the FlowSchema and PriorityLevelConfiguration again")
	dir, _, ok := parseWithStateDir("apf-tighten", args, fs)
	if !ok {
		return 2
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(dir, "kubeconfigs", "admin.kubeconfig"))
	if err != nil {
		errf("%v", err)
		return 1
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		errf("%v", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if *undo {
		for _, k := range []string{"FlowSchema", "PriorityLevelConfiguration"} {
			if err := dyn.Resource(gvrs[k]).Delete(ctx, "localk8s-tight", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				errf("%v", err)
				return 1
			}
		}
		logf("API Priority and Fairness restored")
		return 0
	}
	l := &launcher{dyn: dyn}
	if err := l.apply(ctx, apfManifest); err != nil {
		errf("%v", err)
		return 1
	}
	// Wait until the apiserver classifies the test user's requests with the new FlowSchema
	// (its APF config controller applies changes within a few seconds).
	fs2, err := dyn.Resource(gvrs["FlowSchema"]).Get(ctx, "localk8s-tight", metav1.GetOptions{})
	if err != nil {
		errf("%v", err)
		return 1
	}
	tcfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(dir, "kubeconfig-apf-test"))
	if err != nil {
		errf("%v", err)
		return 1
	}
	hc, err := rest.HTTPClientFor(tcfg)
	if err != nil {
		errf("%v", err)
		return 1
	}
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", tcfg.Host+"/api/v1/namespaces/default", nil)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.Header.Get("X-Kubernetes-PF-FlowSchema-UID") == string(fs2.GetUID()) {
				break
			}
		}
		select {
		case <-ctx.Done():
			errf("the apiserver did not apply FlowSchema localk8s-tight within 30s")
			return 1
		case <-time.After(200 * time.Millisecond):
		}
	}
	logf("FlowSchema/PriorityLevelConfiguration localk8s-tight in effect: user localk8s-apf-test (kubeconfig %s) "+
		"gets very few seats and 429 + Retry-After beyond them", filepath.Join(dir, "kubeconfig-apf-test"))
	return 0
}

// cmdKillPod is the fault hook "a pod's process dies from outside": SIGKILL to the main process
// of every container of the pod (the process bwrap runs inside the pod's network namespace),
// as the OOM killer or a crash would; the node agent must notice and restart it.
func cmdKillPod(args []string) int {
	fs := flag.NewFlagSet("kill-pod", flag.ContinueOnError)
	ns := fs.String("n", "default", "namespace")
	dir, rest, ok := parseWithStateDir("kill-pod", args, fs)
	if !ok || len(rest) != 1 {
		if ok {
			errf("kill-pod: want one pod name")
		}
		return 2
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(dir, "kubeconfigs", "admin.kubeconfig"))
	if err != nil {
		errf("%v", err)
		return 1
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		errf("%v", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pod, err := cs.CoreV1().Pods(*ns).Get(ctx, rest[0], metav1.GetOptions{})
	if err != nil {
		errf("%v", err)
		return 1
	}
	uid := strings.ReplaceAll(string(pod.UID), "-", "")[:12]
	ents, _ := os.ReadDir("/run/netns")
	var killed []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), netnsPrefix) || !strings.HasSuffix(e.Name(), uid) {
			continue
		}
		out, err := run("ip", "netns", "pids", e.Name())
		if err != nil {
			errf("%v", err)
			return 1
		}
		for _, f := range strings.Fields(out) {
			pid, _ := strconv.Atoi(f)
			if pid <= 0 || procComm(pid) == "bwrap" || procComm(procPPid(pid)) != "bwrap" {
				continue
			}
			comm := procComm(pid)
			if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
				killed = append(killed, fmt.Sprintf("pid %d (%s)", pid, comm))
			}
		}
	}
	if len(killed) == 0 {
		errf("no container process found for pod %s/%s (uid %s) on this machine", *ns, rest[0], pod.UID)
		return 1
	}
	logf("SIGKILLed %s of pod %s/%s", strings.Join(killed, ", "), *ns, rest[0])
	return 0
}

func procComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

func procPPid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}
