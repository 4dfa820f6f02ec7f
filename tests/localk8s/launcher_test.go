package localk8s_test

// End-to-end test of the launcher with the real control plane and no nodes:
//
//	KVCACHE_LOCALK8S=1 go test -run TestLauncher -v -timeout 15m .   (as root, from tests/localk8s)
//
// The binaries come from LOCALK8S_BIN_DIR (default ../../build/bin: localk8s and the upstream
// binaries beside it). Skipped unless KVCACHE_LOCALK8S=1, as it needs root and changes the
// host's network (and checks that every change is undone).

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type cluster struct {
	t      *testing.T
	bin    string
	dir    string
	cmd    *exec.Cmd
	out    *strings.Builder
	mu     sync.Mutex
	readyT time.Duration
}

func binDir(t *testing.T) string {
	d := os.Getenv("LOCALK8S_BIN_DIR")
	if d == "" {
		d = "../../build/bin"
	}
	d, _ = filepath.Abs(d)
	for _, b := range []string{"localk8s", "kubectl", "kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(d, b)); err != nil {
			t.Fatalf("%s missing in %s (make build)", b, d)
		}
	}
	return d
}

func up(t *testing.T, bin, dir string, extra ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, bin: bin, dir: dir, out: &strings.Builder{}}
	if len(extra) == 0 {
		extra = []string{"--nodes", "0"}
	}
	c.cmd = exec.Command(filepath.Join(bin, "localk8s"), append([]string{"up", "--state-dir", dir}, extra...)...)
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, _ := c.cmd.StdoutPipe()
	c.cmd.Stderr = c.cmd.Stdout
	start := time.Now()
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			c.out.WriteString(line + "\n")
			c.mu.Unlock()
			t.Log(line)
			if strings.HasPrefix(line, "export KUBECONFIG=") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	select {
	case <-ready:
		c.readyT = time.Since(start)
		t.Logf("up -> ready in %v", c.readyT)
	case <-time.After(4 * time.Minute):
		c.stop()
		t.Fatalf("cluster not ready within 4 minutes")
	}
	return c
}

// stop sends SIGTERM and expects a clean exit 0.
func (c *cluster) stop() {
	c.t.Helper()
	if c.cmd.Process == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			c.t.Errorf("localk8s up exited with %v", err)
		}
	case <-time.After(2 * time.Minute):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		c.t.Errorf("localk8s up did not stop within 2 minutes")
		<-done
	}
}

func (c *cluster) kubectl(args ...string) string {
	c.t.Helper()
	out, err := exec.Command(filepath.Join(c.bin, "kubectl"), append([]string{"--kubeconfig", filepath.Join(c.dir, "kubeconfig")}, args...)...).CombinedOutput()
	if err != nil {
		c.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func (c *cluster) localk8s(args ...string) string {
	c.t.Helper()
	out, err := exec.Command(filepath.Join(c.bin, "localk8s"), args...).CombinedOutput()
	if err != nil {
		c.t.Fatalf("localk8s %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func resolve(name string) ([]string, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, "10.96.0.10:53")
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return r.LookupHost(ctx, name)
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return strings.TrimSpace(string(b))
}

// hostState is what must be identical before `up` and after it stopped.
func hostState(t *testing.T) map[string]string {
	t.Helper()
	s := map[string]string{
		"ip_forward":     readFile("/proc/sys/net/ipv4/ip_forward"),
		"route_localnet": readFile("/proc/sys/net/ipv4/conf/all/route_localnet"),
		"bridge-nf":      readFile("/proc/sys/net/bridge/bridge-nf-call-iptables"),
	}
	if _, err := os.Stat("/sys/class/net/kvcbr0"); err == nil {
		s["bridge"] = "kvcbr0 exists"
	}
	if out, _ := exec.Command("ip", "route", "show", "10.96.0.0/16").CombinedOutput(); len(strings.TrimSpace(string(out))) > 0 {
		s["route"] = string(out)
	}
	for _, ipt := range []string{"iptables-save", "ip6tables-save"} {
		out, _ := exec.Command(ipt).CombinedOutput()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "KUBE-") || strings.Contains(l, "LOCALK8S") || strings.Contains(l, "kvcbr0") {
				s[ipt] += l + "\n"
			}
		}
	}
	if out, err := exec.Command("nft", "list", "tables").CombinedOutput(); err == nil {
		s["nft tables"] = strings.TrimSpace(string(out))
	}
	if out, _ := exec.Command("ip", "netns", "list").CombinedOutput(); strings.Contains(string(out), "lk8s-") {
		s["netns"] = string(out)
	}
	return s
}

func leftoverProcs(dir string) []string {
	var left []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), dir) {
			left = append(left, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return left
}

func checkClean(t *testing.T, before map[string]string, dir string) {
	t.Helper()
	after := hostState(t)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("host state %s: before %q, after %q", k, v, after[k])
		}
	}
	for k, v := range after {
		if _, ok := before[k]; !ok {
			t.Errorf("left behind: %s: %s", k, v)
		}
	}
	if l := leftoverProcs(dir); len(l) > 0 {
		t.Errorf("processes left: %v", l)
	}
	if _, err := os.Stat(filepath.Join(dir, "state.json")); err == nil {
		t.Errorf("state.json left (cleanup reported problems)")
	}
}

func TestLauncher(t *testing.T) {
	if os.Getenv("KVCACHE_LOCALK8S") != "1" {
		t.Skip("set KVCACHE_LOCALK8S=1 (needs root; starts a real control plane)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	bin := binDir(t)
	dir, err := os.MkdirTemp("", "localk8s-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	before := hostState(t)
	for _, k := range []string{"bridge", "route", "iptables-save", "ip6tables-save", "netns"} {
		if v, ok := before[k]; ok {
			t.Fatalf("host not clean before the test (another localk8s running?): %s: %s", k, v)
		}
	}

	c := up(t, bin, dir)
	func() {
		defer c.stop()
		if !strings.Contains(c.kubectl("get", "ns"), "kube-system") {
			t.Errorf("kubectl get ns: no kube-system")
		}
		c.kubectl("create", "service", "clusterip", "lk8s-test", "--tcp=80:8080")
		ip := c.kubectl("get", "service", "lk8s-test", "-o", "jsonpath={.spec.clusterIP}")
		var got []string
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if got, err = resolve("lk8s-test.default.svc.cluster.local."); err == nil && len(got) == 1 && got[0] == ip {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if len(got) != 1 || got[0] != ip {
			t.Errorf("DNS lk8s-test.default.svc.cluster.local: got %v (%v), want %s", got, err, ip)
		}
		// host -> kubernetes Service ClusterIP -> apiserver (kube-proxy DNAT)
		hc := apiClient(t, dir, "admin")
		if resp, err := hc.Get("https://10.96.0.1:443/readyz"); err != nil {
			t.Errorf("GET https://10.96.0.1/readyz: %v", err)
		} else {
			resp.Body.Close()
		}

		// fault hooks
		c.localk8s("restart", "--state-dir", dir, "apiserver")
		c.kubectl("get", "service", "lk8s-test")
		c.localk8s("restart", "--state-dir", dir, "etcd")
		c.kubectl("get", "service", "lk8s-test")
		c.localk8s("compact-etcd", "--state-dir", dir)
		// a watch from an old resourceVersion is now refused with 410 Gone
		resp, err := hc.Get("https://127.0.0.1:6443/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=2&timeoutSeconds=1")
		if err != nil {
			t.Errorf("watch after compaction: %v", err)
		} else {
			var b strings.Builder
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				b.WriteString(sc.Text())
			}
			resp.Body.Close()
			if !strings.Contains(b.String(), `"code":410`) {
				t.Errorf("watch from resourceVersion 2 after compaction: want 410 Gone, got %s", b.String())
			}
		}
		c.localk8s("apf-tighten", "--state-dir", dir)
		checkAPF429(t, dir)
		c.localk8s("apf-tighten", "--state-dir", dir, "--undo")
	}()
	checkClean(t, before, dir)
	if t.Failed() {
		return
	}

	// a second up on the same state dir keeps every object
	c = up(t, bin, dir)
	func() {
		defer c.stop()
		if got := c.kubectl("get", "service", "lk8s-test", "-o", "name"); got != "service/lk8s-test" {
			t.Errorf("after restart: %q", got)
		}
	}()
	checkClean(t, before, dir)
	if t.Failed() {
		return
	}

	// a crashed launcher (SIGKILL: no cleanup of its own) is undone by `down` from state.json,
	// sysctls included
	c = up(t, bin, dir)
	c.crash()
	if st, err := os.ReadFile(filepath.Join(dir, "state.json")); err != nil || !strings.Contains(string(st), "ip_forward") {
		t.Errorf("state.json after a crash does not record ip_forward: %v %s", err, st)
	}
	c.localk8s("down", "--state-dir", dir)
	checkClean(t, before, dir)
}

// crash SIGKILLs the launcher alone (its components run in their own process groups and are
// left running, as after a real crash).
func (c *cluster) crash() {
	c.t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	_ = c.cmd.Wait()
}

func apiClient(t *testing.T, dir, user string) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(dir, "pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "pki", user+".crt"), filepath.Join(dir, "pki", user+".key"))
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}, ForceAttemptHTTP2: true}
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// checkAPF429: the apf-test user, flooding the apiserver, gets 429 with Retry-After.
func checkAPF429(t *testing.T, dir string) {
	hc := apiClient(t, dir, "apf-test")
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		codes := map[int]int{}
		retryAfter := ""
		for i := 0; i < 300; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := hc.Get(fmt.Sprintf("https://127.0.0.1:6443/api/v1/configmaps?i=%d", i))
				if err != nil {
					return
				}
				resp.Body.Close()
				mu.Lock()
				codes[resp.StatusCode]++
				if resp.StatusCode == 429 {
					retryAfter = resp.Header.Get("Retry-After")
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
		t.Logf("APF flood: status counts %v", codes)
		if codes[429] > 0 {
			if retryAfter == "" {
				t.Errorf("429 without Retry-After")
			}
			return
		}
		time.Sleep(time.Second) // the APF config controller may not have applied the new schema yet
	}
	t.Errorf("no 429 for the apf-test user after apf-tighten")
}

const webManifest = `
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 8000, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-cip}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8000, name: http}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: registry.example/kvtest-web:1.0
        args: ["-m", "http.server", "8000", "--directory", "/data"]
        readinessProbe: {tcpSocket: {port: 8000}, periodSeconds: 2}
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
`

// TestLauncherNodes: 3 nodes in 3 zones; a StatefulSet with volumeClaimTemplates comes up with
// Bound PVCs in DIR/volumes, a claim grows in place, a service account's request is in the
// audit log, its pods resolve by name, its ClusterIP answers from the host, a
// pod process SIGKILLed from outside is restarted, a force-deleted pod comes back under its name
// (also right after a restart of `up` over the same state dir); everything is removed on stop.
func TestLauncherNodes(t *testing.T) {
	if os.Getenv("KVCACHE_LOCALK8S") != "1" {
		t.Skip("set KVCACHE_LOCALK8S=1 (needs root; starts a real control plane)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found (plays the test image)")
	}
	bin := binDir(t)
	dir, err := os.MkdirTemp("", "localk8s-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	before := hostState(t)
	for _, k := range []string{"bridge", "route", "iptables-save", "ip6tables-save", "netns"} {
		if v, ok := before[k]; ok {
			t.Fatalf("host not clean before the test (another localk8s running?): %s: %s", k, v)
		}
	}
	c := up(t, bin, dir, "--nodes", "3", "--image", "kvtest-web="+py)
	func() {
		defer c.stop()
		zones := c.kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.labels.topology\\.kubernetes\\.io/zone}")
		if zones != "zone-a zone-b zone-c" {
			t.Errorf("node zones: %q", zones)
		}
		mf := filepath.Join(dir, "web.yaml")
		if err := os.WriteFile(mf, []byte(webManifest), 0o644); err != nil {
			t.Fatal(err)
		}
		c.kubectl("apply", "-f", mf)
		c.kubectl("rollout", "status", "statefulset/web", "--timeout=180s")
		for i := 0; i < 3; i++ {
			pvc := fmt.Sprintf("data-web-%d", i)
			if ph := c.kubectl("get", "pvc", pvc, "-o", "jsonpath={.status.phase}"); ph != "Bound" {
				t.Fatalf("%s: %s", pvc, ph)
			}
			pv := c.kubectl("get", "pvc", pvc, "-o", "jsonpath={.spec.volumeName}")
			path := c.kubectl("get", "pv", pv, "-o", "jsonpath={.spec.hostPath.path}")
			if !strings.HasPrefix(path, filepath.Join(dir, "volumes")+"/") {
				t.Errorf("PV %s at %s, not under the state dir", pv, path)
			}
			if err := os.WriteFile(filepath.Join(path, "index.html"), []byte(fmt.Sprintf("web-%d\n", i)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		checkExpansion(t, c)
		checkAuditLog(t, c)
		// pod DNS names
		podIP := c.kubectl("get", "pod", "web-0", "-o", "jsonpath={.status.podIP}")
		if got, err := resolve("web-0.web.default.svc.cluster.local."); err != nil || len(got) != 1 || got[0] != podIP {
			t.Errorf("web-0.web.default.svc.cluster.local: %v %v, want %s", got, err, podIP)
		}
		// the ClusterIP from the host reaches every ready pod
		cip := c.kubectl("get", "service", "web-cip", "-o", "jsonpath={.spec.clusterIP}")
		seen := map[string]bool{}
		hc := &http.Client{Timeout: 3 * time.Second}
		for i := 0; i < 60 && len(seen) < 3; i++ {
			resp, err := hc.Get("http://" + cip + "/index.html")
			if err != nil {
				continue
			}
			var b strings.Builder
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				b.WriteString(sc.Text())
			}
			resp.Body.Close()
			seen[b.String()] = true
		}
		if len(seen) != 3 {
			t.Errorf("ClusterIP %s answered from %v, want web-0..2", cip, seen)
		}
		// a pod process killed from outside is restarted
		c.localk8s("kill-pod", "--state-dir", dir, "web-1")
		deadline := time.Now().Add(60 * time.Second)
		for {
			rc := c.kubectl("get", "pod", "web-1", "-o", "jsonpath={.status.containerStatuses[0].restartCount}")
			if rc != "0" && rc != "" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("web-1 not restarted after kill-pod (restartCount %s)", rc)
				break
			}
			time.Sleep(time.Second)
		}
		c.kubectl("wait", "--for=condition=Ready", "pod/web-1", "--timeout=60s")

		// a force-deleted pod comes back under its name (new UID) on the node that ran it
		mf = filepath.Join(dir, "pinned.yaml")
		if err := os.WriteFile(mf, []byte(pinnedManifest), 0o644); err != nil {
			t.Fatal(err)
		}
		c.kubectl("apply", "-f", mf)
		c.kubectl("rollout", "status", "statefulset/pinned", "--timeout=120s")
		forceDeleteReturns(t, c, "pinned-0")
	}()
	// Each agent logs to DIR/logs/<node>.log, as the launcher's README says.
	if log := readFile(filepath.Join(dir, "logs", "node-2.log")); !strings.Contains(log, "pinned-0") {
		t.Errorf("logs/node-2.log does not name pinned-0, the pod it ran: %q", log)
	}

	// `up` again over the same state dir (as a second `make run` does): the objects stay, the
	// agents run their pods anew, and a force delete right away works the same.
	c = up(t, bin, dir, "--nodes", "3", "--image", "kvtest-web="+py)
	func() {
		defer c.stop()
		c.kubectl("rollout", "status", "statefulset/pinned", "--timeout=120s")
		forceDeleteReturns(t, c, "pinned-0")
	}()
	checkClean(t, before, dir)
}

// pinnedManifest is a one-pod StatefulSet kept on node-2, so a re-created pod of its name is
// started by the same agent that ran the deleted one.
const pinnedManifest = `
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: pinned}
spec:
  serviceName: web
  replicas: 1
  selector: {matchLabels: {app: pinned}}
  template:
    metadata: {labels: {app: pinned}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node-2}
      terminationGracePeriodSeconds: 30
      containers:
      - name: web
        image: registry.example/kvtest-web:1.0
        args: ["-m", "http.server", "8000"]
        readinessProbe: {tcpSocket: {port: 8000}, periodSeconds: 1}
`

// forceDeleteReturns deletes pod with --grace-period=0 --force and expects its StatefulSet's
// new pod of that name (another UID) Running and Ready within 30 s.
func forceDeleteReturns(t *testing.T, c *cluster, pod string) {
	t.Helper()
	oldUID := c.kubectl("get", "pod", pod, "-o", "jsonpath={.metadata.uid}")
	start := time.Now()
	c.kubectl("delete", "pod", pod, "--grace-period=0", "--force")
	await(t, "force-deleted "+pod+" Running and Ready again with a new UID", 30*time.Second, func() string {
		out, err := exec.Command(filepath.Join(c.bin, "kubectl"), "--kubeconfig", filepath.Join(c.dir, "kubeconfig"),
			"get", "pod", pod, "-o", `jsonpath={.metadata.uid} {.status.phase} {.status.conditions[?(@.type=="Ready")].status}`).CombinedOutput()
		if err != nil {
			return string(out)
		}
		f := strings.Fields(string(out))
		if len(f) == 3 && f[0] != oldUID && f[1] == "Running" && f[2] == "True" {
			return ""
		}
		return fmt.Sprintf("uid/phase/ready %q (old uid %s)", out, oldUID)
	})
	t.Logf("%s back in %.1fs", pod, time.Since(start).Seconds())
}

// await polls f every 500 ms until it returns "" (done) or timeout passes; then fails with
// f's last answer.
func await(t *testing.T, what string, timeout time.Duration, f func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		last := f()
		if last == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: not within %v: %s", what, timeout, last)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// checkExpansion: StorageClass standard allows expansion; a grown claim's PV capacity and its
// status.capacity follow the request.
func checkExpansion(t *testing.T, c *cluster) {
	c.kubectl("patch", "pvc", "data-web-0", "--type=merge",
		"-p", `{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}`)
	pv := c.kubectl("get", "pvc", "data-web-0", "-o", "jsonpath={.spec.volumeName}")
	await(t, "data-web-0 expanded to 2Gi", 30*time.Second, func() string {
		claim := c.kubectl("get", "pvc", "data-web-0", "-o", "jsonpath={.status.capacity.storage}")
		vol := c.kubectl("get", "pv", pv, "-o", "jsonpath={.spec.capacity.storage}")
		if claim == "2Gi" && vol == "2Gi" {
			return ""
		}
		return fmt.Sprintf("claim %s, PV %s", claim, vol)
	})
}

// checkAuditLog: a request with a service account's token (default/default, which may not
// list pods) is in DIR/logs/audit.log at Metadata level with its RBAC decision; nothing of
// kube-system's service accounts (the controllers) and no RequestReceived stage is.
func checkAuditLog(t *testing.T, c *cluster) {
	token := c.kubectl("create", "token", "default")
	out, err := exec.Command(filepath.Join(c.bin, "kubectl"), "--kubeconfig", os.DevNull,
		"--server", "https://127.0.0.1:6443", "--certificate-authority", filepath.Join(c.dir, "pki", "ca.crt"),
		"--token", token, "get", "pods", "-n", "default").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "forbidden") {
		t.Errorf("default/default listing pods: %v %s (want forbidden)", err, out)
	}
	type event struct {
		Stage string `json:"stage"`
		Verb  string `json:"verb"`
		User  struct {
			Username string `json:"username"`
		} `json:"user"`
		ObjectRef struct {
			Resource  string `json:"resource"`
			Namespace string `json:"namespace"`
		} `json:"objectRef"`
		ResponseStatus struct {
			Code int `json:"code"`
		} `json:"responseStatus"`
		Annotations map[string]string `json:"annotations"`
	}
	await(t, "the forbidden list in logs/audit.log", 10*time.Second, func() string {
		f, err := os.Open(filepath.Join(c.dir, "logs", "audit.log"))
		if err != nil {
			return err.Error()
		}
		defer f.Close()
		found, lines := false, 0
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 1<<20), 1<<20)
		for sc.Scan() {
			lines++
			var e event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatalf("audit.log line %d: %v: %s", lines, err, sc.Text())
			}
			if strings.HasPrefix(e.User.Username, "system:serviceaccount:kube-system:") || e.Stage == "RequestReceived" {
				t.Fatalf("audit.log line %d should have been left out by the policy: %s", lines, sc.Text())
			}
			found = found || (e.User.Username == "system:serviceaccount:default:default" &&
				e.Stage == "ResponseComplete" && e.Verb == "list" && e.ObjectRef.Resource == "pods" &&
				e.ObjectRef.Namespace == "default" && e.ResponseStatus.Code == 403 &&
				e.Annotations["authorization.k8s.io/decision"] == "forbid")
		}
		if found {
			return ""
		}
		return fmt.Sprintf("not among its %d lines", lines)
	})
}
