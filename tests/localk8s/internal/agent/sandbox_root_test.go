package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/virtual-kubelet/virtual-kubelet/node/api"
)

// rootEnv sets up a private bridge network (kvctest0, 10.250.0.0/24) and a provider on it.
// It is skipped unless KVCACHE_LOCALK8S_ROOT=1 (needs root, ip, bwrap and the CNI plugins).
type rootEnv struct {
	t        *testing.T
	p        *Provider
	dir      string
	mu       sync.Mutex
	statuses map[string]*corev1.Pod
	cancel   context.CancelFunc
}

const testBridge = "kvctest0"

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

func newRootEnv(t *testing.T, objs ...any) *rootEnv {
	if os.Getenv("KVCACHE_LOCALK8S_ROOT") != "1" {
		t.Skip("set KVCACHE_LOCALK8S_ROOT=1 to run (root, bwrap, /usr/lib/cni)")
	}
	dir := t.TempDir()
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"kvctest","plugins":[{"type":"bridge","bridge":%q,"isGateway":true,"hairpinMode":true,
"ipam":{"type":"host-local","ranges":[[{"subnet":"10.250.0.0/24","gateway":"10.250.0.1"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":%q}}]}`,
		testBridge, filepath.Join(dir, "ipam"))
	confPath := filepath.Join(dir, "net.conflist")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// The bridge plugin's isGateway turns on net.ipv4.ip_forward for the whole host: put back
	// what was there (every root test holds /tmp/localk8s.lock, so no cluster relies on it).
	fwdBefore, err := os.ReadFile(ipForwardPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cfg := Config{NodeName: "testnode", Zone: "z1", StateDir: filepath.Join(dir, "state"), CNIConfPath: confPath,
		CNIBinDir: "/usr/lib/cni", ClusterDNS: "10.96.0.10", ClusterDomain: "cluster.local",
		Images: map[string]string{"busybox": "sh", "pyhttp": "python3 -m http.server"}}
	client := fake.NewSimpleClientset()
	for _, o := range objs {
		switch v := o.(type) {
		case *corev1.ConfigMap:
			client.CoreV1().ConfigMaps(v.Namespace).Create(ctx, v, metav1.CreateOptions{})
		case *corev1.Secret:
			client.CoreV1().Secrets(v.Namespace).Create(ctx, v, metav1.CreateOptions{})
		}
	}
	e := &rootEnv{t: t, dir: dir, statuses: map[string]*corev1.Pod{}, cancel: cancel}
	e.p = NewProvider(ctx, cfg, client, "10.250.0.1")
	e.p.volumeRefresh = time.Second
	e.p.NotifyPods(ctx, func(p *corev1.Pod) {
		e.mu.Lock()
		e.statuses[p.Name] = p
		e.mu.Unlock()
	})
	t.Cleanup(func() {
		e.p.Shutdown(time.Second)
		cancel()
		exec.Command("ip", "link", "del", testBridge).Run()
		if cur, err := os.ReadFile(ipForwardPath); err == nil && string(cur) != string(fwdBefore) {
			if err := os.WriteFile(ipForwardPath, fwdBefore, 0o644); err != nil {
				t.Errorf("restoring %s to %q: %v", ipForwardPath, strings.TrimSpace(string(fwdBefore)), err)
			}
		}
		// nothing of ours may be left
		if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), "kvc-testnode-") {
			t.Errorf("netns left: %s", out)
		}
	})
	return e
}

func (e *rootEnv) waitFor(name string, what string, cond func(*corev1.Pod) bool, timeout time.Duration) *corev1.Pod {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		pod, err := e.p.GetPod(context.Background(), "default", name)
		if err == nil && cond(pod) {
			return pod
		}
		time.Sleep(100 * time.Millisecond)
	}
	pod, _ := e.p.GetPod(context.Background(), "default", name)
	e.t.Fatalf("timed out waiting for %s: %s; status: %+v", name, what, pod.Status)
	return nil
}

func testPod(name string, ctrs ...corev1.Container) *corev1.Pod {
	grace := int64(2)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name + "-0123456789"), Labels: map[string]string{"app": "t"}},
		Spec:       corev1.PodSpec{Containers: ctrs, NodeName: "testnode", TerminationGracePeriodSeconds: &grace, Subdomain: "sub"},
	}
}

func logsOf(t *testing.T, p *Provider, pod, ctr string, opts api.ContainerLogOpts) string {
	rc, err := p.GetContainerLogs(context.Background(), "default", pod, ctr, opts)
	if err != nil {
		t.Fatalf("logs: %v", err)
	}
	defer rc.Close()
	b := new(strings.Builder)
	buf := make([]byte, 4096)
	for {
		n, err := rc.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}

func running(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodRunning && len(p.Status.ContainerStatuses) > 0 && p.Status.ContainerStatuses[0].State.Running != nil
}

func TestRootPodLifecycle(t *testing.T) {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg", Namespace: "default"}, Data: map[string]string{"greeting": "hi", "file.txt": "content1"}}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sec", Namespace: "default"}, Data: map[string][]byte{"password": []byte("s3cret")}}
	e := newRootEnv(t, cm, sec)
	pod := testPod("hello", corev1.Container{
		Name: "main", Image: "busybox:1.36",
		Command: []string{"sh", "-c", "echo hello; echo GREETING=$GREETING PW=$PW NAME=$MY_NAME; hostname; cat /etc/resolv.conf; cat /cfg/file.txt; echo; touch /data/x && echo wrote; touch /usr/forbidden 2>/dev/null || echo rofs; sleep 100"},
		Env: []corev1.EnvVar{
			{Name: "GREETING", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "greeting"}}},
			{Name: "PW", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "password"}}},
			{Name: "MY_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		},
		VolumeMounts: []corev1.VolumeMount{{Name: "cfg", MountPath: "/cfg"}, {Name: "data", MountPath: "/data"}},
	})
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}},
		{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	if err := e.p.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	got := e.waitFor("hello", "running", running, 30*time.Second)
	if !strings.HasPrefix(got.Status.PodIP, "10.250.0.") || got.Status.HostIP != "10.250.0.1" {
		t.Fatalf("podIP %q hostIP %q", got.Status.PodIP, got.Status.HostIP)
	}
	var logs string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		logs = logsOf(t, e.p, "hello", "main", api.ContainerLogOpts{})
		if strings.Contains(logs, "rofs") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, want := range []string{"hello\n", "GREETING=hi PW=s3cret NAME=hello", "\nhello\n", "nameserver 10.96.0.10", "search default.svc.cluster.local svc.cluster.local cluster.local", "options ndots:5", "content1", "wrote", "rofs"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	// the pod answers on its IP from the host (ping via a TCP connect to a closed port gives RST quickly)
	if out, err := exec.Command("ip", "netns", "exec", NetnsName("kvc-testnode-", string(pod.UID)), "ip", "-4", "addr", "show", "eth0").CombinedOutput(); err != nil || !strings.Contains(string(out), got.Status.PodIP) {
		t.Errorf("netns addr: %v %s", err, out)
	}
	// exec inside the container
	pr, c, _ := e.p.container("default", "hello", "main")
	out, code, err := pr.execCapture(context.Background(), c, c.proc, []string{"sh", "-c", "hostname; ls /data; cat /etc/hosts | tail -1"})
	if err != nil || code != 0 || !strings.Contains(out, "hello") || !strings.Contains(out, "x") || !strings.Contains(out, "hello.sub.default.svc.cluster.local") {
		t.Errorf("exec: %v %d %q", err, code, out)
	}
	// configMap update is seen in place
	cm.Data["file.txt"] = "content2"
	e.p.client.CoreV1().ConfigMaps("default").Update(context.Background(), cm, metav1.UpdateOptions{})
	deadline = time.Now().Add(10 * time.Second)
	for {
		out, _, _ = pr.execCapture(context.Background(), c, c.proc, []string{"cat", "/cfg/file.txt"})
		if out == "content2" || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out != "content2" {
		t.Errorf("configmap not updated in place: %q", out)
	}
	// kill the process from outside: it restarts (restartPolicy Always), restartCount 1
	pid := c.proc.childPid
	exec.Command("kill", "-9", fmt.Sprint(pid)).Run()
	got = e.waitFor("hello", "restarted", func(p *corev1.Pod) bool {
		return running(p) && p.Status.ContainerStatuses[0].RestartCount == 1
	}, 20*time.Second)
	if lt := got.Status.ContainerStatuses[0].LastTerminationState.Terminated; lt == nil || lt.ExitCode != 137 {
		t.Errorf("lastState: %+v", got.Status.ContainerStatuses[0].LastTerminationState)
	}
	prev := logsOf(t, e.p, "hello", "main", api.ContainerLogOpts{Previous: true})
	if !strings.Contains(prev, "hello") {
		t.Errorf("previous logs: %q", prev)
	}
	// delete: SIGTERM is ignored by sh as pid 1, so SIGKILL after the 2 s grace
	start := time.Now()
	e.p.DeletePod(context.Background(), pod)
	deadline = time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := e.p.GetPod(context.Background(), "default", "hello"); err != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := e.p.GetPod(context.Background(), "default", "hello"); err == nil {
		t.Fatal("pod not removed")
	}
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Errorf("deleted after %v, before the grace period", d)
	}
	e.mu.Lock()
	last := e.statuses["hello"]
	e.mu.Unlock()
	if last.Status.Phase != corev1.PodFailed || last.Status.ContainerStatuses[0].State.Terminated == nil {
		t.Errorf("final status: %s %+v", last.Status.Phase, last.Status.ContainerStatuses)
	}
	if _, err := os.Stat("/run/netns/" + NetnsName("kvc-testnode-", string(pod.UID))); err == nil {
		t.Error("netns left after delete")
	}
	if out, _ := exec.Command("pgrep", "-f", "echo hello; echo GREETING").Output(); len(out) > 0 {
		t.Errorf("processes left: %s", out)
	}
}

func TestRootProbesAndRestartPolicy(t *testing.T) {
	e := newRootEnv(t)
	// a web server with readiness + liveness httpGet probes
	web := testPod("web", corev1.Container{
		Name: "web", Image: "pyhttp", Args: []string{"8080"},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt(8080)}}, PeriodSeconds: 1},
		LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt(8080)}}, PeriodSeconds: 1, InitialDelaySeconds: 1},
	})
	// a liveness exec probe that fails -> restarts
	sick := testPod("sick", corev1.Container{
		Name: "c", Image: "busybox", Command: []string{"sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"},
		LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"test", "-e", "/nonexistent"}}}, PeriodSeconds: 1, FailureThreshold: 2},
	})
	// a job-like pod: exits 0 with restartPolicy OnFailure -> Succeeded; and an unmapped image
	done := testPod("done", corev1.Container{Name: "c", Image: "busybox", Command: []string{"sh", "-c", "exit 0"}})
	done.Spec.RestartPolicy = corev1.RestartPolicyOnFailure
	bad := testPod("bad", corev1.Container{Name: "c", Image: "nosuchimage:1"})
	for _, p := range []*corev1.Pod{web, sick, done, bad} {
		if err := e.p.CreatePod(context.Background(), p); err != nil {
			t.Fatal(err)
		}
	}
	got := e.waitFor("web", "ready", func(p *corev1.Pod) bool {
		return running(p) && p.Status.ContainerStatuses[0].Ready
	}, 30*time.Second)
	ready := false
	for _, c := range got.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			ready = true
		}
	}
	if !ready {
		t.Errorf("Ready condition: %+v", got.Status.Conditions)
	}
	resp, err := http.Get("http://" + net.JoinHostPort(got.Status.PodIP, "8080") + "/")
	if err != nil {
		t.Errorf("GET pod: %v", err)
	} else {
		resp.Body.Close()
	}
	e.waitFor("sick", "restarted by liveness", func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) > 0 && p.Status.ContainerStatuses[0].RestartCount >= 1
	}, 30*time.Second)
	e.waitFor("done", "succeeded", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded }, 20*time.Second)
	b := e.waitFor("bad", "ErrImagePull", func(p *corev1.Pod) bool {
		w := p.Status.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == "ErrImagePull"
	}, 10*time.Second)
	t.Logf("unmapped image message: %s", b.Status.ContainerStatuses[0].State.Waiting.Message)
	if _, err := os.Stat("/run/netns/" + NetnsName("kvc-testnode-", string(done.UID))); err == nil {
		t.Error("succeeded pod kept its netns")
	}
}

func TestRootInitLimitsSecurity(t *testing.T) {
	e := newRootEnv(t)
	uid := int64(1000)
	pod := testPod("limits", corev1.Container{
		Name: "main", Image: "busybox", Command: []string{"sh", "-c", "id -u; cat /w/order; exec python3 -c 'x = bytearray(200*1024*1024); print(len(x))'"},
		Resources:       corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("40Mi"), corev1.ResourceCPU: resource.MustParse("500m")}},
		SecurityContext: &corev1.SecurityContext{RunAsUser: &uid},
		VolumeMounts:    []corev1.VolumeMount{{Name: "w", MountPath: "/w"}},
	})
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	pod.Spec.InitContainers = []corev1.Container{
		{Name: "i1", Image: "busybox", Command: []string{"sh", "-c", "echo one > /w/order; chmod 666 /w/order"}, VolumeMounts: []corev1.VolumeMount{{Name: "w", MountPath: "/w"}}},
		{Name: "i2", Image: "busybox", Command: []string{"sh", "-c", "echo two >> /w/order"}, VolumeMounts: []corev1.VolumeMount{{Name: "w", MountPath: "/w"}}},
	}
	pod.Spec.Volumes = []corev1.Volume{{Name: "w", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	if err := e.p.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	got := e.waitFor("limits", "failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed }, 30*time.Second)
	st := got.Status.ContainerStatuses[0].State.Terminated
	if st == nil || st.Reason != "OOMKilled" || st.ExitCode != 137 {
		t.Errorf("main: %+v", got.Status.ContainerStatuses[0].State)
	}
	for _, s := range got.Status.InitContainerStatuses {
		if s.State.Terminated == nil || s.State.Terminated.ExitCode != 0 {
			t.Errorf("init %s: %+v", s.Name, s.State)
		}
	}
	logs := logsOf(t, e.p, "limits", "main", api.ContainerLogOpts{})
	if !strings.Contains(logs, "1000\none\ntwo\n") {
		t.Errorf("logs: %q", logs)
	}
}

func TestRootGracefulDelete(t *testing.T) {
	e := newRootEnv(t)
	hp := filepath.Join(e.dir, "hostdir")
	os.MkdirAll(hp, 0o755)
	pod := testPod("graceful", corev1.Container{
		Name: "c", Image: "busybox",
		Command:      []string{"sh", "-c", "trap 'echo term >> /h/events; exit 0' TERM; echo started; while true; do sleep 0.1; done"},
		Lifecycle:    &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"sh", "-c", "echo prestop >> /h/events"}}}},
		VolumeMounts: []corev1.VolumeMount{{Name: "h", MountPath: "/h"}},
	})
	grace := int64(20)
	pod.Spec.TerminationGracePeriodSeconds = &grace
	pod.Spec.Volumes = []corev1.Volume{{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: hp}}}}
	if err := e.p.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	e.waitFor("graceful", "running", running, 30*time.Second)
	// follow the logs while the container runs; the stream must end when the container stops
	rc, err := e.p.GetContainerLogs(context.Background(), "default", "graceful", "c", api.ContainerLogOpts{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	followed := make(chan string)
	go func() {
		b := new(strings.Builder)
		buf := make([]byte, 1024)
		for {
			n, err := rc.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		followed <- b.String()
	}()
	deleting := pod.DeepCopy()
	now := metav1.Now()
	deleting.DeletionTimestamp, deleting.DeletionGracePeriodSeconds = &now, &grace
	start := time.Now()
	e.p.DeletePod(context.Background(), deleting)
	for time.Since(start) < 15*time.Second {
		if _, err := e.p.GetPod(context.Background(), "default", "graceful"); err != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("graceful stop took %v", d)
	}
	b, _ := os.ReadFile(filepath.Join(hp, "events"))
	if string(b) != "prestop\nterm\n" {
		t.Errorf("events = %q, want preStop then SIGTERM", b)
	}
	select {
	case s := <-followed:
		if !strings.Contains(s, "started") {
			t.Errorf("followed logs %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Error("logs -f did not end when the container stopped")
	}
	e.mu.Lock()
	last := e.statuses["graceful"]
	e.mu.Unlock()
	if last.Status.Phase != corev1.PodSucceeded || last.Status.ContainerStatuses[0].State.Terminated.ExitCode != 0 {
		t.Errorf("final: %s %+v", last.Status.Phase, last.Status.ContainerStatuses[0].State)
	}
}

// shareProcessNamespace: the containers share one PID namespace whose PID 1 is neither of them,
// so one container sees the other's process and its SIGKILL is not ignored (as for PID 1).
func TestRootSharedPIDNamespace(t *testing.T) {
	e := newRootEnv(t)
	killer := `for i in $(seq 100); do
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^sleep 1001'; then kill -9 ${p#/proc/} && echo killed ${p#/proc/}; exec sleep 1000; fi
  done
  sleep 0.1
done
echo not found; exec sleep 1000`
	pod := testPod("shared",
		corev1.Container{Name: "victim", Image: "busybox", Command: []string{"sleep", "1001"}},
		corev1.Container{Name: "killer", Image: "busybox", Command: []string{"sh", "-c", killer}})
	share := true
	pod.Spec.ShareProcessNamespace = &share
	if err := e.p.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	got := e.waitFor("shared", "victim killed by the other container and restarted", func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 2 && p.Status.ContainerStatuses[0].RestartCount >= 1 &&
			p.Status.ContainerStatuses[0].State.Running != nil
	}, 40*time.Second)
	if lt := got.Status.ContainerStatuses[0].LastTerminationState.Terminated; lt == nil || lt.ExitCode != 137 {
		t.Errorf("victim lastState.terminated = %+v, want exit code 137", lt)
	}
	out := logsOf(t, e.p, "shared", "killer", api.ContainerLogOpts{})
	t.Logf("killer: %q; victim restarts %d", out, got.Status.ContainerStatuses[0].RestartCount)
	if !strings.Contains(out, "killed ") || strings.Contains(out, "killed 1\n") {
		t.Errorf("killer log: %q (want a kill of a pid other than 1)", out)
	}
}

// A force-deleted pod whose name a new pod (new UID) takes at once: virtual-kubelet, keyed by
// name, may never call DeletePod for the old UID, nor CreatePod/UpdatePod for the new one (their
// specs compare equal). The pod informer's delete event (PodObjectDeleted) stops the old pod,
// and the one that now holds the name in the API (podFromAPI) starts in its place, once.
func TestRootForceDeletedPodIsReplacedByItsSuccessor(t *testing.T) {
	e := newRootEnv(t)
	ctr := corev1.Container{Name: "main", Image: "busybox", Command: []string{"sh", "-c", "sleep 100"}}
	old := testPod("web-0", ctr)
	succ := old.DeepCopy()
	succ.UID = types.UID("uid-web-0-successor")
	var apiMu sync.Mutex
	inAPI := old // what the pod informer's lister holds for default/web-0
	e.p.podFromAPI = func(ns, name string) (*corev1.Pod, error) {
		apiMu.Lock()
		defer apiMu.Unlock()
		if ns == "default" && name == "web-0" && inAPI != nil {
			return inAPI, nil
		}
		return nil, fmt.Errorf("pod %s/%s not found", ns, name)
	}
	if err := e.p.CreatePod(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	e.waitFor("web-0", "running", running, 30*time.Second)

	// The StatefulSet re-creates web-0 at once; VK hands nothing over.
	apiMu.Lock()
	inAPI = succ
	apiMu.Unlock()
	// A delete event for another UID than the running one changes nothing.
	e.p.PodObjectDeleted(succ)
	if pod, err := e.p.GetPod(context.Background(), "default", "web-0"); err != nil || pod.UID != old.UID {
		t.Fatalf("a delete event for another UID touched the running pod: %v %v", pod, err)
	}

	start := time.Now()
	e.p.PodObjectDeleted(old)
	got := e.waitFor("web-0", "the successor running", func(p *corev1.Pod) bool {
		return p.UID == succ.UID && running(p)
	}, 30*time.Second)
	t.Logf("successor running %.1fs after the old pod's object was deleted", time.Since(start).Seconds())
	if got.Status.PodIP == "" {
		t.Errorf("successor has no pod IP")
	}
	// The old pod's sandbox is gone (its state dir is removed once it has stopped).
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(e.p.cfg.StateDir, "pods", string(old.UID))); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the old pod's state dir is still there")
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if pods, _ := e.p.GetPods(context.Background()); len(pods) != 1 {
		t.Errorf("provider runs %d pods, want the successor only", len(pods))
	}
}
