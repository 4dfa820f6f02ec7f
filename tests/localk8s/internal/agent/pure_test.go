package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type fakeObjects struct {
	secrets map[string]map[string][]byte
	cms     map[string]map[string]string
}

func (f fakeObjects) Secret(ns, name string) (map[string][]byte, error) {
	if s, ok := f.secrets[ns+"/"+name]; ok {
		return s, nil
	}
	return nil, &NotFoundError{What: "secret " + name}
}

func (f fakeObjects) ConfigMap(ns, name string) (map[string]string, error) {
	if s, ok := f.cms[ns+"/"+name]; ok {
		return s, nil
	}
	return nil, &NotFoundError{What: "configmap " + name}
}

func TestExpandVars(t *testing.T) {
	m := func(n string) (string, bool) {
		v, ok := map[string]string{"A": "a", "B": "b", "EMPTY": ""}[n]
		return v, ok
	}
	cases := map[string]string{
		"$(A)":           "a",
		"x$(A)y$(B)z":    "xaybz",
		"$(UNDEF)":       "$(UNDEF)",
		"$$(A)":          "$(A)",
		"$$$(A)":         "$a",
		"$(A":            "$(A",
		"$A":             "$A",
		"$":              "$",
		"a$":             "a$",
		"$(EMPTY)x":      "x",
		"$()":            "$()",
		"$(A)$(B)$$":     "ab$",
		"no vars at all": "no vars at all",
	}
	for in, want := range cases {
		if got := ExpandVars(in, m); got != want {
			t.Errorf("ExpandVars(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestBuildEnv(t *testing.T) {
	opt := true
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u1", Labels: map[string]string{"app": "x", "tier": "y"}, Annotations: map[string]string{"a": "b"}},
		Spec: corev1.PodSpec{NodeName: "n1", ServiceAccountName: "sa", Containers: []corev1.Container{{
			Name: "c",
			Resources: corev1.ResourceRequirements{
				Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1500m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
				Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("32Mi")},
			},
			EnvFrom: []corev1.EnvFromSource{
				{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}}},
				{Prefix: "S_", SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}}},
				{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "missing"}, Optional: &opt}},
			},
			Env: []corev1.EnvVar{
				{Name: "V", Value: "v-$(FROM_CM)-$(KUBERNETES_SERVICE_HOST)-$(LATER)"},
				{Name: "NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
				{Name: "NS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
				{Name: "UID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.uid"}}},
				{Name: "APP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}},
				{Name: "ANN", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['a']"}}},
				{Name: "IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
				{Name: "HIP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
				{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
				{Name: "SA", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.serviceAccountName"}}},
				{Name: "CPU", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}},
				{Name: "CPU_M", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu", Divisor: resource.MustParse("1m")}}},
				{Name: "MEM_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.memory", Divisor: resource.MustParse("1Mi")}}},
				{Name: "PW", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "pw"}}},
				{Name: "CK", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "FROM_CM"}}},
				{Name: "OPT", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "k", Optional: &opt}}},
				{Name: "LATER", Value: "late"},
				{Name: "FROM_CM", Value: "overridden"},
			},
		}}},
	}
	src := fakeObjects{
		secrets: map[string]map[string][]byte{"ns/sec": {"pw": []byte("s3"), "bad-key": []byte("x")}},
		cms:     map[string]map[string]string{"ns/cm": {"FROM_CM": "cmval", "1INVALID": "skip"}},
	}
	rt := PodRuntimeInfo{PodIP: "10.244.0.5", HostIP: "10.244.0.1", NodeName: "n1"}
	env, err := BuildEnv(pod, &pod.Spec.Containers[0], rt, ServiceEnv("10.96.0.1", 443), src)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range env {
		got[e.Name] = e.Value
	}
	want := map[string]string{
		"V": "v-cmval-10.96.0.1-$(LATER)", "NAME": "p", "NS": "ns", "UID": "u1", "APP": "x", "ANN": "b",
		"IP": "10.244.0.5", "HIP": "10.244.0.1", "NODE": "n1", "SA": "sa", "CPU": "2", "CPU_M": "1500", "MEM_MI": "32",
		"PW": "s3", "CK": "cmval", "LATER": "late", "FROM_CM": "overridden", "S_pw": "s3",
		"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443", "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
		"KUBERNETES_PORT": "tcp://10.96.0.1:443",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if got["1INVALID"] != "skip" || got["S_bad-key"] != "x" {
		t.Errorf("relaxed env names (1.34) not accepted: %q %q", got["1INVALID"], got["S_bad-key"])
	}
	for _, k := range []string{"OPT"} {
		if _, ok := got[k]; ok {
			t.Errorf("%s should be absent", k)
		}
	}
	// a missing non-optional secret is an error (CreateContainerConfigError)
	pod.Spec.Containers[0].Env = append(pod.Spec.Containers[0].Env, corev1.EnvVar{Name: "X", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "gone"}, Key: "k"}}})
	if _, err := BuildEnv(pod, &pod.Spec.Containers[0], rt, nil, src); err == nil {
		t.Error("missing secret: no error")
	}
	// metadata.labels as a whole
	if v, _ := PodFieldValue(pod, "metadata.labels", rt); v != "app=\"x\"\ntier=\"y\"" {
		t.Errorf("labels = %q", v)
	}
}

func TestContainerArgvAndImages(t *testing.T) {
	images := map[string]string{"kvcache-node": "/opt/bin/kvcache-node", "registry.local:5000/op": "/bin/op --flag", "busybox:1.36": "/bin/sh"}
	for img, want := range map[string]string{
		"kvcache-node":                     "/opt/bin/kvcache-node",
		"kvcache-node:v1":                  "/opt/bin/kvcache-node",
		"ghcr.io/acme/kvcache-node:v2":     "/opt/bin/kvcache-node",
		"kvcache-node@sha256:abcd":         "/opt/bin/kvcache-node",
		"registry.local:5000/op:latest":    "/bin/op --flag",
		"op":                               "/bin/op --flag",
		"docker.io/library/busybox:latest": "/bin/sh",
	} {
		if got, ok := LookupImage(images, img); !ok || got != want {
			t.Errorf("LookupImage(%q) = %q,%v want %q", img, got, ok, want)
		}
	}
	if _, ok := LookupImage(images, "nginx:1.25"); ok {
		t.Error("nginx should be unmapped")
	}
	if msg := ErrImageNotMapped("nginx:1.25"); !strings.Contains(msg, "--image nginx=PROGRAM") {
		t.Errorf("message %q", msg)
	}
	if ImageRepo("reg:5000/a/b:1.2@sha256:ff") != "reg:5000/a/b" || ImageRepo("reg:5000/a") != "reg:5000/a" {
		t.Error("ImageRepo")
	}
	env := []EnvVar{{"PORT", "8080"}, {"NAME", "n"}}
	c := &corev1.Container{Args: []string{"--port=$(PORT)", "$(NOPE)", "$$(PORT)"}}
	if got := ContainerArgv("/bin/op --flag", c, env); !reflect.DeepEqual(got, []string{"/bin/op", "--flag", "--port=8080", "$(NOPE)", "$(PORT)"}) {
		t.Errorf("argv = %q", got)
	}
	c.Command = []string{"sh", "-c", "echo $(NAME)"}
	if got := ContainerArgv("/bin/op", c, env); !reflect.DeepEqual(got, []string{"sh", "-c", "echo n", "--port=8080", "$(NOPE)", "$(PORT)"}) {
		t.Errorf("argv with command = %q", got)
	}
}

func TestProbeTracker(t *testing.T) {
	t0 := time.Unix(1000, 0)
	p := &corev1.Probe{InitialDelaySeconds: 5, PeriodSeconds: 2, FailureThreshold: 3, SuccessThreshold: 2}
	r := NewProbeTracker(ReadinessProbe, p)
	if r.Result {
		t.Fatal("readiness starts unready")
	}
	if r.Due(t0.Add(4*time.Second), t0) {
		t.Error("due before initial delay")
	}
	if !r.Due(t0.Add(5*time.Second), t0) {
		t.Error("not due at initial delay")
	}
	now := t0.Add(5 * time.Second)
	r.Record(now, true)
	if r.Result {
		t.Error("ready after 1 success with successThreshold 2")
	}
	if r.Due(now.Add(time.Second), t0) || !r.Due(now.Add(2*time.Second), t0) {
		t.Error("period not honoured")
	}
	if !r.Record(now.Add(2*time.Second), true) || !r.Result {
		t.Error("ready after 2 successes")
	}
	r.Record(now.Add(4*time.Second), false)
	r.Record(now.Add(6*time.Second), false)
	if !r.Result {
		t.Error("unready before failureThreshold")
	}
	if !r.Record(now.Add(8*time.Second), false) || r.Result || !r.Failed() {
		t.Error("still ready after 3 failures")
	}
	// a success resets the failure count
	l := NewProbeTracker(LivenessProbe, &corev1.Probe{})
	if !l.Result || l.Period != 10*time.Second || l.Timeout != time.Second || l.FailTh != 3 || l.SuccTh != 1 {
		t.Errorf("defaults: %+v", l)
	}
	l.Record(t0, false)
	l.Record(t0, false)
	l.Record(t0, true)
	l.Record(t0, false)
	l.Record(t0, false)
	if l.Failed() || !l.Result {
		t.Error("liveness failed without 3 consecutive failures")
	}
	l.Record(t0, false)
	if !l.Failed() {
		t.Error("liveness not failed after 3 consecutive failures")
	}
	if s := NewProbeTracker(StartupProbe, &corev1.Probe{}); s.Result {
		t.Error("startup starts not started")
	}
	if n := NewProbeTracker(ReadinessProbe, p).NextDue(t0); !n.Equal(t0.Add(5 * time.Second)) {
		t.Errorf("NextDue %v", n)
	}
}

func TestRestartBackoff(t *testing.T) {
	want := []time.Duration{0, 10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 300 * time.Second, 300 * time.Second}
	for n, w := range want {
		if got := RestartDelay(n); got != w {
			t.Errorf("RestartDelay(%d) = %v, want %v", n, got, w)
		}
	}
	if RestartDelay(100) != 5*time.Minute {
		t.Error("cap")
	}
	for _, c := range []struct {
		p    corev1.RestartPolicy
		code int32
		want bool
	}{{corev1.RestartPolicyAlways, 0, true}, {"", 0, true}, {corev1.RestartPolicyOnFailure, 0, false}, {corev1.RestartPolicyOnFailure, 1, true}, {corev1.RestartPolicyNever, 1, false}} {
		if ShouldRestart(c.p, c.code) != c.want {
			t.Errorf("ShouldRestart(%s,%d)", c.p, c.code)
		}
	}
}

func term(code int32) corev1.ContainerStatus {
	return corev1.ContainerStatus{State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code}}}
}
func runningSt(ready bool) corev1.ContainerStatus {
	return corev1.ContainerStatus{Ready: ready, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
}
func waitingSt(reason string, last *corev1.ContainerStateTerminated) corev1.ContainerStatus {
	return corev1.ContainerStatus{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}}, LastTerminationState: corev1.ContainerState{Terminated: last}}
}

func TestComputePhase(t *testing.T) {
	two := []corev1.Container{{Name: "a"}, {Name: "b"}}
	spec := func(p corev1.RestartPolicy, inits int) *corev1.PodSpec {
		s := &corev1.PodSpec{RestartPolicy: p, Containers: two}
		for i := 0; i < inits; i++ {
			s.InitContainers = append(s.InitContainers, corev1.Container{Name: "i"})
		}
		return s
	}
	cases := []struct {
		name  string
		spec  *corev1.PodSpec
		inits []corev1.ContainerStatus
		ctrs  []corev1.ContainerStatus
		want  corev1.PodPhase
	}{
		{"creating", spec("", 0), nil, []corev1.ContainerStatus{waitingSt("ContainerCreating", nil), waitingSt("ContainerCreating", nil)}, corev1.PodPending},
		{"running", spec("", 0), nil, []corev1.ContainerStatus{runningSt(true), runningSt(false)}, corev1.PodRunning},
		{"one pending", spec("", 0), nil, []corev1.ContainerStatus{runningSt(true), waitingSt("ErrImagePull", nil)}, corev1.PodPending},
		{"crashloop is running", spec(corev1.RestartPolicyAlways, 0), nil, []corev1.ContainerStatus{waitingSt("CrashLoopBackOff", &corev1.ContainerStateTerminated{ExitCode: 1}), runningSt(true)}, corev1.PodRunning},
		{"all exited always", spec(corev1.RestartPolicyAlways, 0), nil, []corev1.ContainerStatus{term(0), term(0)}, corev1.PodRunning},
		{"succeeded", spec(corev1.RestartPolicyOnFailure, 0), nil, []corev1.ContainerStatus{term(0), term(0)}, corev1.PodSucceeded},
		{"failed never", spec(corev1.RestartPolicyNever, 0), nil, []corev1.ContainerStatus{term(0), term(2)}, corev1.PodFailed},
		{"onfailure restarting", spec(corev1.RestartPolicyOnFailure, 0), nil, []corev1.ContainerStatus{term(0), term(2)}, corev1.PodRunning},
		{"init pending", spec("", 1), []corev1.ContainerStatus{runningSt(false)}, []corev1.ContainerStatus{waitingSt("PodInitializing", nil), waitingSt("PodInitializing", nil)}, corev1.PodPending},
		{"init failed never", spec(corev1.RestartPolicyNever, 1), []corev1.ContainerStatus{term(1)}, []corev1.ContainerStatus{waitingSt("PodInitializing", nil), waitingSt("PodInitializing", nil)}, corev1.PodFailed},
		{"init done", spec("", 1), []corev1.ContainerStatus{term(0)}, []corev1.ContainerStatus{runningSt(true), runningSt(true)}, corev1.PodRunning},
	}
	for _, c := range cases {
		if got := ComputePhase(c.spec, c.inits, c.ctrs); got != c.want {
			t.Errorf("%s: phase %s, want %s", c.name, got, c.want)
		}
	}
	if TerminalPhase([]corev1.ContainerStatus{term(0), term(0)}) != corev1.PodSucceeded || TerminalPhase([]corev1.ContainerStatus{term(0), term(137)}) != corev1.PodFailed {
		t.Error("TerminalPhase")
	}
}

func TestComputeConditions(t *testing.T) {
	spec := &corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}, {Name: "b"}}, InitContainers: []corev1.Container{{Name: "i"}}}
	t1 := metav1.NewTime(time.Unix(100, 0))
	t2 := metav1.NewTime(time.Unix(200, 0))
	prev := []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(time.Unix(50, 0))}}
	c1 := ComputeConditions(prev, spec, corev1.PodPending, []corev1.ContainerStatus{runningSt(false)}, []corev1.ContainerStatus{waitingSt("PodInitializing", nil), waitingSt("PodInitializing", nil)}, t1)
	get := func(cs []corev1.PodCondition, ty corev1.PodConditionType) corev1.PodCondition {
		for _, c := range cs {
			if c.Type == ty {
				return c
			}
		}
		t.Fatalf("no %s condition", ty)
		return corev1.PodCondition{}
	}
	if c := get(c1, corev1.PodScheduled); c.LastTransitionTime.Unix() != 50 {
		t.Errorf("PodScheduled transition time changed: %v", c.LastTransitionTime)
	}
	if c := get(c1, corev1.PodInitialized); c.Status != corev1.ConditionFalse || c.Reason != "ContainersNotInitialized" {
		t.Errorf("Initialized: %+v", c)
	}
	if c := get(c1, corev1.PodReady); c.Status != corev1.ConditionFalse || !strings.Contains(c.Message, "[a b]") {
		t.Errorf("Ready: %+v", c)
	}
	c2 := ComputeConditions(c1, spec, corev1.PodRunning, []corev1.ContainerStatus{term(0)}, []corev1.ContainerStatus{runningSt(true), runningSt(true)}, t2)
	if c := get(c2, corev1.PodReady); c.Status != corev1.ConditionTrue || !c.LastTransitionTime.Equal(&t2) {
		t.Errorf("Ready: %+v", c)
	}
	if c := get(c2, corev1.ContainersReady); c.Status != corev1.ConditionTrue {
		t.Errorf("ContainersReady: %+v", c)
	}
	if c := get(c2, corev1.PodInitialized); c.Status != corev1.ConditionTrue {
		t.Errorf("Initialized: %+v", c)
	}
	c3 := ComputeConditions(c2, spec, corev1.PodRunning, []corev1.ContainerStatus{term(0)}, []corev1.ContainerStatus{runningSt(true), runningSt(true)}, metav1.NewTime(time.Unix(300, 0)))
	if c := get(c3, corev1.PodReady); !c.LastTransitionTime.Equal(&t2) {
		t.Error("unchanged condition got a new transition time")
	}
	if c3[0].Type != corev1.PodScheduled || c3[3].Type != corev1.PodReady {
		t.Errorf("order: %v", c3)
	}
}

func TestRenderHostsAndResolv(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "ns1"}, Spec: corev1.PodSpec{Subdomain: "web",
		HostAliases: []corev1.HostAlias{{IP: "1.2.3.4", Hostnames: []string{"foo", "bar"}}}}}
	h := RenderHosts(pod, "10.244.0.7", "cluster.local")
	for _, want := range []string{"127.0.0.1\tlocalhost\n", "10.244.0.7\tweb-0.web.ns1.svc.cluster.local\tweb-0\n", "1.2.3.4\tfoo\tbar\n"} {
		if !strings.Contains(h, want) {
			t.Errorf("hosts lacks %q:\n%s", want, h)
		}
	}
	pod.Spec.Subdomain, pod.Spec.Hostname = "", "custom"
	if h := RenderHosts(pod, "10.244.0.7", "cluster.local"); !strings.Contains(h, "10.244.0.7\tcustom\n") {
		t.Errorf("hosts:\n%s", h)
	}
	if PodHostname(pod) != "custom" {
		t.Error("hostname")
	}
	r := RenderResolvConf(pod, "10.96.0.10", "cluster.local", "nameserver 8.8.8.8\n")
	want := "nameserver 10.96.0.10\nsearch ns1.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	if r != want {
		t.Errorf("resolv.conf:\n%s\nwant:\n%s", r, want)
	}
	two := "2"
	pod.Spec.DNSConfig = &corev1.PodDNSConfig{Searches: []string{"extra.local"}, Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: &two}, {Name: "edns0"}}}
	r = RenderResolvConf(pod, "10.96.0.10", "cluster.local", "")
	if !strings.Contains(r, "search ns1.svc.cluster.local svc.cluster.local cluster.local extra.local\n") || !strings.Contains(r, "options ndots:2 edns0\n") {
		t.Errorf("dnsConfig merge:\n%s", r)
	}
	pod.Spec.DNSPolicy, pod.Spec.DNSConfig = corev1.DNSDefault, nil
	if r := RenderResolvConf(pod, "10.96.0.10", "cluster.local", "nameserver 8.8.8.8\nsearch lan\n"); r != "nameserver 8.8.8.8\nsearch lan\n" {
		t.Errorf("Default policy:\n%s", r)
	}
}

func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	changed, err := WriteAtomic(dir, map[string]fileData{"a": {[]byte("1"), 0o644}, "sub/b": {[]byte("2"), 0o400}})
	if err != nil || !changed {
		t.Fatal(changed, err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "a"))
	fi, _ := os.Stat(filepath.Join(dir, "sub", "b"))
	if string(b) != "1" || fi.Mode().Perm() != 0o400 {
		t.Errorf("content %q mode %v", b, fi.Mode())
	}
	if changed, _ := WriteAtomic(dir, map[string]fileData{"a": {[]byte("1"), 0o644}, "sub/b": {[]byte("2"), 0o400}}); changed {
		t.Error("rewrote unchanged payload")
	}
	if _, err := WriteAtomic(dir, map[string]fileData{"a": {[]byte("new"), 0o644}}); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(filepath.Join(dir, "a"))
	if string(b) != "new" {
		t.Errorf("a = %q", b)
	}
	if _, err := os.Lstat(filepath.Join(dir, "sub")); err == nil {
		t.Error("stale key kept")
	}
	ents, _ := os.ReadDir(dir)
	ts := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "..") && e.Name() != "..data" {
			ts++
		}
	}
	if ts != 1 {
		t.Errorf("%d timestamped dirs left", ts)
	}
}

// fakeFS is a tiny host file system for BwrapArgs.
type fakeFS map[string]string // path -> "dir" | "file" | "link:TARGET"

type fakeInfo struct {
	name string
	mode os.FileMode
}

func (f fakeInfo) Name() string               { return f.name }
func (f fakeInfo) Size() int64                { return 0 }
func (f fakeInfo) Mode() os.FileMode          { return f.mode }
func (f fakeInfo) ModTime() time.Time         { return time.Time{} }
func (f fakeInfo) IsDir() bool                { return f.mode.IsDir() }
func (f fakeInfo) Sys() any                   { return nil }
func (f fakeInfo) Type() os.FileMode          { return f.mode.Type() }
func (f fakeInfo) Info() (os.FileInfo, error) { return f, nil }

func (f fakeFS) Lstat(p string) (os.FileInfo, error) {
	if p == "/" {
		return fakeInfo{"/", os.ModeDir}, nil
	}
	v, ok := f[p]
	if !ok {
		return nil, os.ErrNotExist
	}
	switch {
	case v == "dir":
		return fakeInfo{filepath.Base(p), os.ModeDir}, nil
	case strings.HasPrefix(v, "link:"):
		return fakeInfo{filepath.Base(p), os.ModeSymlink}, nil
	}
	return fakeInfo{filepath.Base(p), 0}, nil
}
func (f fakeFS) Readlink(p string) (string, error) { return strings.TrimPrefix(f[p], "link:"), nil }
func (f fakeFS) ReadDir(d string) ([]os.DirEntry, error) {
	var out []os.DirEntry
	for p := range f {
		if filepath.Dir(p) == d && p != d {
			fi, _ := f.Lstat(p)
			out = append(out, fi.(fakeInfo))
		}
	}
	return out, nil
}

func TestBwrapArgs(t *testing.T) {
	fs := fakeFS{"/usr": "dir", "/etc": "dir", "/etc/hosts": "file", "/etc/passwd": "file", "/var": "dir", "/var/run": "link:/run",
		"/run": "dir", "/run/lock": "dir", "/bin": "link:usr/bin", "/tmp": "dir", "/proc": "dir", "/dev": "dir", "/data": "dir"}
	spec := SandboxSpec{Netns: "ns1", Hostname: "h", HostsFile: "/s/hosts", ResolvFile: "/s/resolv", Argv: []string{"prog", "a"}, StatusFD: 3}
	// all targets exist: the host root is bound read-only as a whole
	spec.Mounts = []Mount{{Source: "/v/data", Target: "/data"}, {Source: "/v/t", Target: "/tmp/x/y"}}
	args := strings.Join(BwrapArgs(fs, spec), " ")
	for _, want := range []string{"ip netns exec ns1 bwrap ", "--unshare-pid", "--hostname h", "--json-status-fd 3", "--ro-bind / /", "--ro-bind /s/hosts /etc/hosts",
		"--ro-bind /s/resolv /etc/resolv.conf", "--bind /v/data /data", "--bind /v/t /tmp/x/y", "--chdir / -- prog a"} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %q: %s", want, args)
		}
	}
	// a target under a missing path through a symlink: /var/run -> /run is rebuilt on tmpfs
	spec.Mounts = []Mount{{Source: "/v/sa", Target: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}, {Source: "/v/c", Target: "/etc/cfg"}}
	spec.WorkDir = "/work"
	a := BwrapArgs(fs, spec)
	args = strings.Join(a, " ")
	if strings.Contains(args, "--ro-bind / /") {
		t.Errorf("root bound whole although a target is missing: %s", args)
	}
	for _, want := range []string{"--symlink usr/bin /bin", "--ro-bind-try /usr /usr", "--dir /run", "--ro-bind-try /run/lock /run/lock", "--dir /etc",
		"--ro-bind-try /etc/passwd /etc/passwd", "--ro-bind /v/sa /run/secrets/kubernetes.io/serviceaccount", "--bind /v/c /etc/cfg", "--chdir /work",
		"--perms 0755 --dir /run/secrets --perms 0755 --dir /run/secrets/kubernetes.io --ro-bind /v/sa"} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %q: %s", want, args)
		}
	}
	if strings.Contains(args, "--ro-bind-try /tmp") || strings.Contains(args, "--ro-bind-try /proc") || strings.Contains(args, "--ro-bind-try /run /run") {
		t.Errorf("special or expanded dirs bound: %s", args)
	}
	// A program below /tmp (a build there): bound read-only, its directories made 0755 on the
	// sandbox's own tmpfs although they exist on the host (bwrap would make them 0700, and a
	// non-root container could not reach the program).
	fs["/tmp/ci"], fs["/tmp/ci/bin"], fs["/tmp/ci/bin/prog"] = "dir", "dir", "file"
	if got := ProgramMounts("/usr/bin/prog"); len(got) != 0 {
		t.Errorf("a program the host root shows is bound again: %v", got)
	}
	spec.Mounts = ProgramMounts("/tmp/ci/bin/prog")
	args = strings.Join(BwrapArgs(fs, spec), " ")
	if want := "--tmpfs /tmp --ro-bind /s/hosts /etc/hosts --ro-bind /s/resolv /etc/resolv.conf " +
		"--perms 0755 --dir /tmp/ci --perms 0755 --dir /tmp/ci/bin --ro-bind /tmp/ci/bin/prog /tmp/ci/bin/prog"; !strings.Contains(args, want) {
		t.Errorf("args lack %q: %s", want, args)
	}
}

func TestFormatLogLines(t *testing.T) {
	lines := []string{
		"2026-01-01T00:00:01.000000000Z stdout F one\n",
		"2026-01-01T00:00:02.000000000Z stderr P par",
		"2026-01-01T00:00:02.500000000Z stderr F tial\n",
		"2026-01-01T00:00:03.000000000Z stdout F three\n",
	}
	now := time.Date(2026, 1, 1, 0, 0, 4, 0, time.UTC)
	if got := string(FormatLogLines(lines, api.ContainerLogOpts{}, now)); got != "one\npartial\nthree\n" {
		t.Errorf("plain: %q", got)
	}
	if got := string(FormatLogLines(lines, api.ContainerLogOpts{Tail: 1}, now)); got != "three\n" {
		t.Errorf("tail: %q", got)
	}
	if got := string(FormatLogLines(lines, api.ContainerLogOpts{SinceSeconds: 2}, now)); got != "partial\nthree\n" && got != "tial\nthree\n" {
		t.Errorf("since: %q", got)
	}
	if got := string(FormatLogLines(lines[:1], api.ContainerLogOpts{Timestamps: true}, now)); got != "2026-01-01T00:00:01Z one\n" {
		t.Errorf("timestamps: %q", got)
	}
	if got := string(FormatLogLines(lines, api.ContainerLogOpts{LimitBytes: 5}, now)); got != "one\np" {
		t.Errorf("limit: %q", got)
	}
}

func TestServiceLinkEnv(t *testing.T) {
	svcs := []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "kv-cache"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.20", Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "headless"}, Spec: corev1.ServiceSpec{ClusterIP: "None", Ports: []corev1.ServicePort{{Port: 80}}}},
	}
	got := map[string]string{}
	for _, e := range ServiceLinkEnv(svcs) {
		got[e.Name] = e.Value
	}
	want := map[string]string{
		"KV_CACHE_SERVICE_HOST": "10.96.0.20", "KV_CACHE_SERVICE_PORT": "80", "KV_CACHE_SERVICE_PORT_HTTP": "80", "KV_CACHE_SERVICE_PORT_DNS": "53",
		"KV_CACHE_PORT": "tcp://10.96.0.20:80", "KV_CACHE_PORT_80_TCP": "tcp://10.96.0.20:80", "KV_CACHE_PORT_80_TCP_PROTO": "tcp",
		"KV_CACHE_PORT_80_TCP_PORT": "80", "KV_CACHE_PORT_80_TCP_ADDR": "10.96.0.20", "KV_CACHE_PORT_53_UDP": "udp://10.96.0.20:53", "KV_CACHE_PORT_53_UDP_PROTO": "udp", "KV_CACHE_PORT_53_UDP_PORT": "53", "KV_CACHE_PORT_53_UDP_ADDR": "10.96.0.20",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

func TestExitCodeOfASignalledProcessIs128PlusSignal(t *testing.T) {
	err := exec.Command("sh", "-c", "kill -9 $$").Run()
	ee, ok := err.(*exec.ExitError)
	if !ok {
		t.Fatalf("want an ExitError, got %v", err)
	}
	if got := ExitCodeOf(ee); got != 137 {
		t.Fatalf("ExitCodeOf = %d, want 137", got)
	}
	err = exec.Command("sh", "-c", "exit 3").Run()
	if got := ExitCodeOf(err.(*exec.ExitError)); got != 3 {
		t.Fatalf("ExitCodeOf = %d, want 3", got)
	}
}

func TestReadinessGates(t *testing.T) {
	spec := &corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}},
		ReadinessGates: []corev1.PodReadinessGate{{ConditionType: "example.com/lb"}}}
	ready := []corev1.ContainerStatus{runningSt(true)}
	now := metav1.NewTime(time.Unix(100, 0))
	cond := func(cs []corev1.PodCondition, ty corev1.PodConditionType) *corev1.PodCondition {
		for i := range cs {
			if cs[i].Type == ty {
				return &cs[i]
			}
		}
		return nil
	}
	// the gate's condition does not exist yet: containers ready, pod not
	c1 := ComputeConditionsWithGates(nil, spec, corev1.PodRunning, nil, ready, nil, now)
	if r := cond(c1, corev1.PodReady); r.Status != corev1.ConditionFalse || r.Reason != "ReadinessGatesNotReady" ||
		r.Message != `corresponding condition of pod readiness gate "example.com/lb" does not exist.` {
		t.Errorf("no gate condition: Ready %+v", r)
	}
	if cr := cond(c1, corev1.ContainersReady); cr.Status != corev1.ConditionTrue {
		t.Errorf("ContainersReady %+v", cr)
	}
	// False in the API: carried over, still not Ready
	api := []corev1.PodCondition{{Type: "example.com/lb", Status: corev1.ConditionFalse}}
	c2 := ComputeConditionsWithGates(c1, spec, corev1.PodRunning, nil, ready, api, now)
	if g := cond(c2, "example.com/lb"); g == nil || g.Status != corev1.ConditionFalse {
		t.Errorf("gate condition not carried over: %+v", c2)
	}
	if r := cond(c2, corev1.PodReady); r.Status != corev1.ConditionFalse ||
		r.Message != `the status of pod readiness gate "example.com/lb" is not "True", but False` {
		t.Errorf("gate False: Ready %+v", r)
	}
	// True: Ready; the gate condition sorts after the kubelet's own
	api[0].Status = corev1.ConditionTrue
	c3 := ComputeConditionsWithGates(c2, spec, corev1.PodRunning, nil, ready, api, metav1.NewTime(time.Unix(200, 0)))
	if r := cond(c3, corev1.PodReady); r.Status != corev1.ConditionTrue || r.LastTransitionTime.Unix() != 200 {
		t.Errorf("gate True: Ready %+v", r)
	}
	if c3[len(c3)-1].Type != "example.com/lb" || len(c3) != 5 {
		t.Errorf("conditions %+v", c3)
	}
}

func TestFollowCRI(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	if err := os.WriteFile(path, []byte("2026-01-01T00:00:00Z stdout F before attach\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := openAtEnd(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	done := make(chan struct{})
	var out, errOut strings.Builder
	finished := make(chan error, 1)
	go func() { finished <- followCRIFrom(context.Background(), r, done, &out, &errOut) }()
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("2026-01-01T00:00:01Z stdout F one\n2026-01-01T00:00:01Z stderr F oops\n2026-01-01T00:00:02Z stdout P par")
	f.WriteString("t\n2026-01-01T00:00:02Z stdout F ial\n")
	f.Close()
	close(done)
	if err := <-finished; err != nil {
		t.Fatal(err)
	}
	if out.String() != "one\npartial\n" || errOut.String() != "oops\n" {
		t.Errorf("stdout %q stderr %q", out.String(), errOut.String())
	}
}

// VK's DeletePod and the pod informer's delete event can both finish a force-deleted pod at
// the same moment: one caller stops it and cleans up, the others wait for that; nothing is done
// twice (a second close of pr.finished panicked and took the whole launcher down). No sandbox
// runs here: the pod never started, so stopping it needs no root.
func TestFinishPodByConcurrentCallersCleansUpOnce(t *testing.T) {
	p := NewProvider(context.Background(), Config{NodeName: "n", StateDir: t.TempDir()}, nil, "10.0.0.1")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "default", UID: "u1"}}
	for round := 0; round < 50; round++ {
		pr := newPodRuntime(p, pod)
		pr.sandboxPhaseOver()
		p.mu.Lock()
		p.pods[pr.key] = pr
		p.mu.Unlock()
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				p.finishPod(pr, 0, true)
			}()
		}
		close(start)
		wg.Wait()
		if _, err := p.GetPod(context.Background(), "default", "web-0"); err == nil {
			t.Fatalf("round %d: the pod is still in the provider", round)
		}
	}
}
