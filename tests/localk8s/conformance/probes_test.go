package conformance

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// A failing liveness probe restarts the container (restartCount 1, Ready again: it heals), and a
// server process SIGKILLed restarts with restartCount+1 and lastState exit code 137.
func TestLivenessAndKilledProcessRestart(t *testing.T) {
	ns := namespace(t, "probe")
	c := serverContainer()
	c.ReadinessProbe = httpProbe("/readyz", 1)
	c.LivenessProbe = httpProbe("/livez", 2)
	spec := podSpec(c)
	spec.ShareProcessNamespace = ptr.To(true)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "probe"}, Spec: spec}
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

	// Killed process: SIGKILL from inside the pod; restartCount 2, exit code 137.
	out, err = execPy(ns, "probe", killPy)
	if err != nil {
		t.Fatalf("kill: %v %s", err, out)
	}
	t.Logf("in pod: %s", strings.TrimSpace(out))
	await(t, 2*time.Minute, "killed server restarted (restartCount 2, lastState exitCode 137) and Ready", func() (bool, error) {
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
		t.Logf("after kill: restartCount %d, lastState.terminated exitCode %d reason %q signal %d",
			st.RestartCount, lt.ExitCode, lt.Reason, lt.Signal)
	}
}
