// Package conformance checks a Kubernetes cluster the way the project relies on it: workloads,
// Services and DNS, probes and restarts, kubectl logs/exec/port-forward, ServiceAccount tokens
// and RBAC, and the official Python and JavaScript clients. It knows nothing about localk8s:
// it runs unchanged against any cluster, only KUBECONFIG differs (skipped when it is unset).
//
//	KUBECONFIG=... go test -count=1 -v -timeout 30m ./conformance      (from tests/localk8s)
//	tests/localk8s/conformance/run.sh                                  (starts localk8s itself)
//
// Environment:
//
//	KUBECONFIG             cluster to test (required)
//	KUBECTL                kubectl binary (default ../../../build/bin/kubectl if present, else PATH)
//	CONFORMANCE_IMAGE      image of every test pod (default python:3.12-slim); the pods run
//	                       `python3` and `sh` from it. localk8s maps it with --image python=/usr/bin/python3
//	CONFORMANCE_PYTHON     interpreter for python_client_test.py (default /usr/bin/python3)
//	CONFORMANCE_NODE       node binary for node/crud_watch.mjs (default node on PATH)
//
// Every test creates its own namespace (conf-<test>-<random>) and deletes it at the end. Nothing
// sleeps for a fixed time: every expectation is awaited by polling with a timeout.
package conformance

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	podTimeout  = 3 * time.Minute
	pollEvery   = 250 * time.Millisecond
	defaultImg  = "python:3.12-slim"
	serverPort  = 8080
	gracePeriod = int64(2)
)

// serverPy is the program of the test pods: an HTTP server on :8080 answering
//
//	/          the pod's hostname
//	/readyz    200, or 503 after /set-unready (until /set-ready)
//	/livez     200, or 500 after /set-dead
//	/oom       allocates memory until the kernel kills the process (memory limit)
//
// It prints "serving <hostname>" at start and one line per request but probes (for kubectl logs), appends
// its hostname to /data/boot.log when /data exists, and exits on SIGTERM.
const serverPy = `
import http.server, os, signal, socket, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
host = socket.gethostname()
state = {"ready": True, "alive": True}
if os.path.isdir("/data"):
    with open("/data/boot.log", "a") as f:
        f.write(host + "\n")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code, body = 200, host
        if self.path == "/set-unready": state["ready"] = False
        elif self.path == "/set-ready": state["ready"] = True
        elif self.path == "/set-dead": state["alive"] = False
        elif self.path == "/readyz" and not state["ready"]: code = 503
        elif self.path == "/livez" and not state["alive"]: code = 500
        elif self.path == "/oom":
            print("allocating until the memory limit kills me", flush=True)
            hog = []
            for i in range(1024):
                hog.append(bytearray(8 << 20))
                hog[-1][::4096] = b"x" * len(hog[-1][::4096])
        elif self.path == "/boot-log":
            body = open("/data/boot.log").read() if os.path.exists("/data/boot.log") else ""
        b = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, fmt, *args):
        if self.path in ("/readyz", "/livez"):
            return  # probes: not logged, so the log's last line is the last real request
        print("request %s %s" % (self.path, args[1] if len(args) > 1 else ""), flush=True)
http.server.ThreadingHTTPServer.allow_reuse_address = True
srv = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H)
print("serving " + host, flush=True)
srv.serve_forever()
`

// idlePy keeps a client pod running until SIGTERM.
const idlePy = `
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("client up", flush=True)
while True: time.sleep(3600)
`

var (
	kubeconfig string
	cs         *kubernetes.Clientset
	kubectlBin string
	image      string
)

func TestMain(m *testing.M) {
	kubeconfig = os.Getenv("KUBECONFIG")
	if kubeconfig == "" {
		fmt.Println("conformance: KUBECONFIG is not set: skipping (run.sh starts a localk8s)")
		os.Exit(0)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "conformance:", err)
		os.Exit(1)
	}
	cfg.QPS, cfg.Burst = 50, 100
	cs = kubernetes.NewForConfigOrDie(cfg)
	kubectlBin = os.Getenv("KUBECTL")
	if kubectlBin == "" {
		if p, _ := filepath.Abs("../../../build/bin/kubectl"); fileExists(p) {
			kubectlBin = p
		} else {
			kubectlBin = "kubectl"
		}
	}
	image = os.Getenv("CONFORMANCE_IMAGE")
	if image == "" {
		image = defaultImg
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		fmt.Fprintln(os.Stderr, "conformance: server version:", err)
		os.Exit(1)
	}
	fmt.Printf("conformance: server %s, kubectl %s, image %s\n", v.GitVersion, kubectlBin, image)
	os.Exit(m.Run())
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// namespace creates conf-<prefix>-<random> and deletes it (and waits until it is gone) when
// the test ends.
func namespace(t *testing.T, prefix string) string {
	t.Helper()
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 5)
	for i := range b {
		b[i] = letters[rand.Intn(len(letters))]
	}
	name := "conf-" + prefix + "-" + string(b)
	ctx := context.Background()
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: name, Labels: map[string]string{"kvcache.io/conformance": "true"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	// As the e2e framework does: pods are refused until the controller-manager has made the
	// namespace's default ServiceAccount.
	err = poll(time.Minute, func() (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("namespace %s: no default ServiceAccount: %v", name, err)
	}
	t.Logf("namespace %s", name)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := kubectl(nil, "get", "all,pvc,endpointslices,events", "-n", name, "-o", "wide")
			t.Logf("state of %s at failure:\n%s", name, out)
		}
		if err := cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete namespace %s: %v", name, err)
			return
		}
		start := time.Now()
		err := poll(3*time.Minute, func() (bool, error) {
			_, err := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			t.Errorf("namespace %s not deleted: %v", name, err)
		} else {
			t.Logf("namespace %s deleted in %.1fs", name, time.Since(start).Seconds())
		}
	})
	return name
}

// poll calls f until it returns true, an error, or the timeout passes.
func poll(timeout time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := f()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			if last != nil {
				return fmt.Errorf("timed out after %s", timeout)
			}
			return fmt.Errorf("timed out after %s", timeout)
		}
		time.Sleep(pollEvery)
	}
}

// await is poll that fails the test with what it was waiting for.
func await(t *testing.T, timeout time.Duration, what string, f func() (bool, error)) {
	t.Helper()
	start := time.Now()
	var lastState string
	err := poll(timeout, func() (bool, error) {
		ok, err := f()
		if err != nil {
			lastState = err.Error()
		}
		return ok, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v (last error: %s)", what, err, lastState)
	}
	t.Logf("%s (%.1fs)", what, time.Since(start).Seconds())
}

// kubectl runs kubectl with stdin (may be nil) and returns combined output.
func kubectl(stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kubectlBin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func mustKubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := kubectl(nil, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("kubectl %s:\n%s", strings.Join(args, " "), strings.TrimRight(out, "\n"))
	return out
}

// execPy runs a python3 program inside a pod (kubectl exec) and returns its stdout+stderr.
func execPy(ns, pod, program string, args ...string) (string, error) {
	a := append([]string{"exec", "-n", ns, pod, "--", "python3", "-c", program}, args...)
	return kubectl(nil, a...)
}

// serverContainer is the container of every server pod.
func serverContainer() corev1.Container {
	return corev1.Container{
		Name:    "server",
		Image:   image,
		Command: []string{"python3", "-u", "-c", serverPy},
		Ports:   []corev1.ContainerPort{{Name: "http", ContainerPort: serverPort}},
	}
}

func httpProbe(path string, failureThreshold int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(serverPort)}},
		PeriodSeconds:    1,
		TimeoutSeconds:   1,
		FailureThreshold: failureThreshold,
		SuccessThreshold: 1,
	}
}

func podSpec(c ...corev1.Container) corev1.PodSpec {
	g := gracePeriod
	return corev1.PodSpec{Containers: c, TerminationGracePeriodSeconds: &g}
}

// clientPod starts a pod that idles, for running programs in the cluster's network, and waits
// until it is Running.
func clientPod(t *testing.T, ns string) string {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client", Labels: map[string]string{"role": "client"}},
		Spec:       podSpec(corev1.Container{Name: "client", Image: image, Command: []string{"python3", "-u", "-c", idlePy}}),
	}
	if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitPodReady(t, ns, "client")
	return "client"
}

func isReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func getPod(ns, name string) (*corev1.Pod, error) {
	return cs.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
}

func awaitPodReady(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	await(t, podTimeout, "pod "+name+" Ready", func() (bool, error) {
		p, err := getPod(ns, name)
		if err != nil {
			return false, err
		}
		pod = p
		return isReady(p), fmt.Errorf("phase %s, statuses %s", p.Status.Phase, containerSummary(p))
	})
	return pod
}

func containerSummary(p *corev1.Pod) string {
	var s []string
	for _, c := range p.Status.ContainerStatuses {
		st := "?"
		switch {
		case c.State.Running != nil:
			st = "running"
		case c.State.Waiting != nil:
			st = "waiting " + c.State.Waiting.Reason + ": " + c.State.Waiting.Message
		case c.State.Terminated != nil:
			st = fmt.Sprintf("terminated %d %s", c.State.Terminated.ExitCode, c.State.Terminated.Reason)
		}
		s = append(s, fmt.Sprintf("%s(ready=%v restarts=%d %s)", c.Name, c.Ready, c.RestartCount, st))
	}
	return strings.Join(s, " ")
}

func listPods(ns, selector string) ([]corev1.Pod, error) {
	l, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}
