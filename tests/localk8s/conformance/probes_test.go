package conformance

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

// killPy SIGKILLs the server process of the pod from inside it (shareProcessNamespace, so the
// server is not PID 1 of its namespace, where SIGKILL from inside would be ignored).
const killPy = `
import os, signal
marker = "serve_" + "forever"
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():
        continue
    try:
        cmd = open("/proc/%s/cmdline" % pid, "rb").read().decode(errors="replace")
    except OSError:
        continue
    if marker in cmd:
        os.kill(int(pid), signal.SIGKILL)
        print("killed", pid)
        break
else:
    raise SystemExit("server process not found")
`

func serverStatus(ns, pod string) (*corev1.Pod, *corev1.ContainerStatus, error) {
	p, err := getPod(ns, pod)
	if err != nil {
		return nil, nil, err
	}
	for i := range p.Status.ContainerStatuses {
		if p.Status.ContainerStatuses[i].Name == "server" {
			return p, &p.Status.ContainerStatuses[i], nil
		}
	}
	return p, nil, fmt.Errorf("no status for container server yet")
}

// A failing liveness probe restarts the container (restartCount 1, Ready again: it heals); then
// the container's main process is killed by the kernel (SIGKILL, memory limit exceeded) and the
// container restarts with restartCount+1 and lastState exit code 137.
func TestLivenessAndKilledProcessRestart(t *testing.T) {
	t.Parallel()
	ns := namespace(t, "probe")
	c := serverContainer()
	c.ReadinessProbe = httpProbe("/readyz", 1)
	c.LivenessProbe = httpProbe("/livez", 2)
	c.Resources = corev1.ResourceRequirements{
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
		Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("32Mi")},
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "probe"}, Spec: podSpec(c)}
	if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitPodReady(t, ns, "probe")
	_, st, err := serverStatus(ns, "probe")
	if err != nil || st.RestartCount != 0 {
		t.Fatalf("before: %v %v", st, err)
	}

	// Liveness: /livez starts failing; the container must be restarted.
	out, err := execPy(ns, "probe", `import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:8080/set-dead").read().decode())`)
	if err != nil {
		t.Fatalf("set-dead: %v %s", err, out)
	}
	await(t, 2*time.Minute, "liveness failure restarts the container (restartCount 1) and it is Ready again", func() (bool, error) {
		p, st, err := serverStatus(ns, "probe")
		if err != nil {
			return false, err
		}
		return st.RestartCount == 1 && st.LastTerminationState.Terminated != nil && st.Ready && isReady(p),
			fmt.Errorf("%s", containerSummary(p))
	})
	_, st, _ = serverStatus(ns, "probe")
	t.Logf("after liveness restart: restartCount %d, lastState.terminated exitCode %d reason %q",
		st.RestartCount, st.LastTerminationState.Terminated.ExitCode, st.LastTerminationState.Terminated.Reason)
	out, err = execPy(ns, "probe", `import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:8080/livez").status)`)
	if err != nil || strings.TrimSpace(out) != "200" {
		t.Errorf("new container's /livez: %v %q, want 200", err, out)
	}
	prev := mustKubectl(t, "logs", "-n", ns, "probe", "-c", "server", "--previous")
	if !strings.Contains(prev, "request /set-dead") {
		t.Errorf("kubectl logs --previous lacks the previous container's request /set-dead")
	}
	ev, _ := kubectl(nil, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=probe", "-o",
		"custom-columns=REASON:.reason,MESSAGE:.message", "--sort-by=.lastTimestamp")
	t.Logf("events of pod probe:\n%s", ev)

	// Killed process: the server grows past its memory limit; the kernel SIGKILLs it.
	out, _ = execPy(ns, "probe", `import urllib.request
try:
    urllib.request.urlopen("http://127.0.0.1:8080/oom", timeout=30)
except Exception as e:
    print("server connection ended:", type(e).__name__, e)`)
	t.Logf("in pod: %s", strings.TrimSpace(out))
	await(t, 2*time.Minute, "killed container restarted (restartCount 2) and Ready", func() (bool, error) {
		p, st, err := serverStatus(ns, "probe")
		if err != nil {
			return false, err
		}
		return st.RestartCount == 2 && st.Ready && isReady(p), fmt.Errorf("%s", containerSummary(p))
	})
	_, st, _ = serverStatus(ns, "probe")
	if lt := st.LastTerminationState.Terminated; lt == nil || lt.ExitCode != 137 {
		t.Errorf("lastState.terminated %+v, want exitCode 137 (SIGKILL)", lt)
	} else {
		t.Logf("after kill: restartCount %d, lastState.terminated exitCode %d reason %q",
			st.RestartCount, lt.ExitCode, lt.Reason)
	}
}

// With shareProcessNamespace the pod's processes see each other: a process SIGKILLed by another
// process of the pod restarts with restartCount+1 and exit code 137.
func TestSharedPIDNamespaceKill(t *testing.T) {
	t.Parallel()
	ns := namespace(t, "kill")
	c := serverContainer()
	c.ReadinessProbe = httpProbe("/readyz", 1)
	spec := podSpec(c)
	spec.ShareProcessNamespace = ptr.To(true)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "victim"}, Spec: spec}
	if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitPodReady(t, ns, "victim")
	out, err := execPy(ns, "victim", killPy)
	if err != nil {
		t.Fatalf("kill: %v %s", err, out)
	}
	t.Logf("in pod: %s", strings.TrimSpace(out))
	if strings.TrimSpace(out) == "killed 1" {
		t.Fatalf("the server is PID 1 of the pod's PID namespace although shareProcessNamespace is true " +
			"(a pause/infra process must be PID 1); SIGKILL from inside the namespace is ignored by PID 1")
	}
	await(t, 2*time.Minute, "killed server restarted (restartCount 1) and Ready", func() (bool, error) {
		p, st, err := serverStatus(ns, "victim")
		if err != nil {
			return false, err
		}
		return st.RestartCount == 1 && st.Ready && isReady(p), fmt.Errorf("%s", containerSummary(p))
	})
	_, st, _ := serverStatus(ns, "victim")
	if lt := st.LastTerminationState.Terminated; lt == nil || lt.ExitCode != 137 {
		t.Errorf("lastState.terminated %+v, want exitCode 137 (SIGKILL)", lt)
	} else {
		t.Logf("after kill: restartCount %d, lastState.terminated exitCode %d reason %q", st.RestartCount, lt.ExitCode, lt.Reason)
	}
}

// A readiness gate: the pod is Ready only once another controller (here the test) sets the
// gate's condition True in the pod's status; the kubelet keeps that condition when it writes
// the status, and Ready follows it both ways.
func TestReadinessGate(t *testing.T) {
	t.Parallel()
	ns := namespace(t, "gate")
	const gate = corev1.PodConditionType("conformance.kvcache.io/gate")
	c := serverContainer()
	c.ReadinessProbe = httpProbe("/readyz", 1)
	spec := podSpec(c)
	spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: gate}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "gated"}, Spec: spec}
	if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	readyCond := func(p *corev1.Pod, ty corev1.PodConditionType) *corev1.PodCondition {
		for i := range p.Status.Conditions {
			if p.Status.Conditions[i].Type == ty {
				return &p.Status.Conditions[i]
			}
		}
		return nil
	}
	await(t, podTimeout, "containers ready, pod not Ready (ReadinessGatesNotReady)", func() (bool, error) {
		p, err := getPod(ns, "gated")
		if err != nil {
			return false, err
		}
		cr, rd := readyCond(p, corev1.ContainersReady), readyCond(p, corev1.PodReady)
		return cr != nil && cr.Status == corev1.ConditionTrue && rd != nil && rd.Status == corev1.ConditionFalse &&
			rd.Reason == "ReadinessGatesNotReady", fmt.Errorf("conditions %+v", p.Status.Conditions)
	})
	setGate := func(st corev1.ConditionStatus) {
		t.Helper()
		patch := fmt.Sprintf(`{"status":{"conditions":[{"type":%q,"status":%q,"lastTransitionTime":%q}]}}`,
			gate, st, time.Now().UTC().Format(time.RFC3339))
		if _, err := cs.CoreV1().Pods(ns).Patch(context.Background(), "gated", types.StrategicMergePatchType,
			[]byte(patch), metav1.PatchOptions{}, "status"); err != nil {
			t.Fatal(err)
		}
	}
	setGate(corev1.ConditionTrue)
	awaitPodReady(t, ns, "gated")
	setGate(corev1.ConditionFalse)
	await(t, podTimeout, "pod not Ready again after the gate turned False", func() (bool, error) {
		p, err := getPod(ns, "gated")
		if err != nil {
			return false, err
		}
		g := readyCond(p, gate)
		return !isReady(p) && g != nil && g.Status == corev1.ConditionFalse, fmt.Errorf("conditions %+v", p.Status.Conditions)
	})
}
