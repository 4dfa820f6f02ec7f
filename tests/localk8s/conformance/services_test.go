package conformance

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probePy resolves argv[1] (all A records) and sends argv[2] HTTP requests (a new connection
// each) to http://argv[1]:argv[3]/, printing "ips: ..." and "hits: name=count ...".
const probePy = `
import socket, sys, urllib.request, collections
host, n, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ips = sorted({a[4][0] for a in socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)})
print("ips:", " ".join(ips))
hits = collections.Counter()
for _ in range(n):
    try:
        hits[urllib.request.urlopen("http://%s:%s/" % (host, port), timeout=3).read().decode()] += 1
    except Exception as e:
        hits["error:" + type(e).__name__] += 1
print("hits:", " ".join("%s=%d" % kv for kv in sorted(hits.items())))
`

type probeResult struct {
	ips  []string
	hits map[string]int
	raw  string
}

func probeService(ns, client, host string, n, port int) (probeResult, error) {
	out, err := execPy(ns, client, probePy, host, fmt.Sprint(n), fmt.Sprint(port))
	r := probeResult{hits: map[string]int{}, raw: strings.TrimSpace(out)}
	if err != nil {
		return r, fmt.Errorf("%v: %s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "ips:":
			r.ips = f[1:]
		case "hits:":
			for _, kv := range f[1:] {
				var k string
				var v int
				i := strings.LastIndex(kv, "=")
				k = kv[:i]
				fmt.Sscan(kv[i+1:], &v)
				r.hits[k] = v
			}
		}
	}
	return r, nil
}

func readyEndpointIPs(ns, svc string) ([]string, error) {
	l, err := cs.DiscoveryV1().EndpointSlices(ns).List(context.Background(), metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return nil, err
	}
	var ips []string
	for _, s := range l.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && *e.Conditions.Ready {
				ips = append(ips, e.Addresses...)
			}
		}
	}
	sort.Strings(ips)
	return ips, nil
}

// A ClusterIP Service and a headless Service resolve (DNS from a pod) and route only to ready
// pods: a pod whose readiness probe fails leaves the EndpointSlice, the headless answer and the
// ClusterIP's backends, and comes back when it passes again.
func TestServiceRoutesToReadyPods(t *testing.T) {
	t.Parallel()
	ns := namespace(t, "svc")
	ctx := context.Background()
	d := deployment("echo", 3)
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sel := map[string]string{"app": "echo"}
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec:       corev1.ServiceSpec{Selector: sel, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(serverPort)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-headless"},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: sel, Ports: []corev1.ServicePort{{Name: "http", Port: serverPort}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	client := clientPod(t, ns)
	mustKubectl(t, "rollout", "status", "-n", ns, "deployment/echo", "--timeout=3m")

	pods, err := listPods(ns, "app=echo")
	if err != nil || len(pods) != 3 {
		t.Fatalf("pods: %d, %v", len(pods), err)
	}
	byIP := map[string]string{}
	var allIPs, names []string
	for _, p := range pods {
		byIP[p.Status.PodIP] = p.Name
		allIPs = append(allIPs, p.Status.PodIP)
		names = append(names, p.Name)
	}
	sort.Strings(allIPs)
	sort.Strings(names)
	clusterIP := svc.Spec.ClusterIP
	fqdn := "echo." + ns + ".svc.cluster.local"
	headless := "echo-headless." + ns + ".svc.cluster.local"
	t.Logf("pods %v ips %v, ClusterIP %s", names, allIPs, clusterIP)

	// All ready: ClusterIP resolves and spreads over the 3 pods; headless resolves to all 3.
	var r probeResult
	await(t, 2*time.Minute, "ClusterIP Service resolves and reaches all 3 pods", func() (bool, error) {
		r, err = probeService(ns, client, fqdn, 30, 80)
		if err != nil {
			return false, err
		}
		ok := len(r.ips) == 1 && r.ips[0] == clusterIP && len(r.hits) == 3
		for _, n := range names {
			ok = ok && r.hits[n] > 0
		}
		return ok, fmt.Errorf("%s", r.raw)
	})
	t.Logf("ClusterIP %s: %s", fqdn, r.raw)
	await(t, time.Minute, "headless Service resolves to the 3 pod IPs and reaches them", func() (bool, error) {
		r, err = probeService(ns, client, headless, 9, serverPort)
		if err != nil {
			return false, err
		}
		return strings.Join(r.ips, ",") == strings.Join(allIPs, ",") && noErrors(r), fmt.Errorf("%s", r.raw)
	})
	t.Logf("headless %s: %s", headless, r.raw)

	// Make one pod unready (its /readyz answers 503 from now on).
	victim := pods[0]
	out, err := execPy(ns, client, `import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())`,
		fmt.Sprintf("http://%s:%d/set-unready", victim.Status.PodIP, serverPort))
	if err != nil {
		t.Fatalf("set-unready: %v %s", err, out)
	}
	var remaining []string
	for _, ip := range allIPs {
		if ip != victim.Status.PodIP {
			remaining = append(remaining, ip)
		}
	}
	await(t, time.Minute, "pod "+victim.Name+" NotReady (readiness probe failing)", func() (bool, error) {
		p, err := getPod(ns, victim.Name)
		return err == nil && !isReady(p) && p.Status.Phase == corev1.PodRunning, err
	})
	await(t, time.Minute, "EndpointSlice of echo lists only the 2 ready pods as ready", func() (bool, error) {
		ips, err := readyEndpointIPs(ns, "echo")
		return err == nil && strings.Join(ips, ",") == strings.Join(remaining, ","), fmt.Errorf("ready %v (%v)", ips, err)
	})
	await(t, time.Minute, "headless Service resolves to the 2 ready pods only", func() (bool, error) {
		r, err = probeService(ns, client, headless, 0, serverPort)
		return err == nil && strings.Join(r.ips, ",") == strings.Join(remaining, ","), fmt.Errorf("%s", r.raw)
	})
	t.Logf("headless with %s unready: %s", victim.Name, r.raw)
	// kube-proxy reprograms asynchronously: await one batch without the unready pod, then check
	// that a second batch does not reach it either.
	noVictim := func() (bool, error) {
		r, err = probeService(ns, client, fqdn, 30, 80)
		if err != nil {
			return false, err
		}
		return r.hits[victim.Name] == 0 && len(r.hits) == 2, fmt.Errorf("%s", r.raw)
	}
	await(t, time.Minute, "ClusterIP routes only to the 2 ready pods", noVictim)
	if ok, err := noVictim(); !ok {
		t.Errorf("a later batch reached the unready pod: %v", err)
	}
	t.Logf("ClusterIP with %s unready: %s", victim.Name, r.raw)

	// Heal: ready again -> back in endpoints, DNS and routing.
	if out, err := execPy(ns, client, `import sys, urllib.request; urllib.request.urlopen(sys.argv[1])`,
		fmt.Sprintf("http://%s:%d/set-ready", victim.Status.PodIP, serverPort)); err != nil {
		t.Fatalf("set-ready: %v %s", err, out)
	}
	await(t, time.Minute, "pod "+victim.Name+" Ready again and back in the EndpointSlice", func() (bool, error) {
		ips, err := readyEndpointIPs(ns, "echo")
		return err == nil && strings.Join(ips, ",") == strings.Join(allIPs, ","), fmt.Errorf("ready %v (%v)", ips, err)
	})
	await(t, time.Minute, "ClusterIP reaches "+victim.Name+" again", func() (bool, error) {
		r, err = probeService(ns, client, fqdn, 30, 80)
		return err == nil && r.hits[victim.Name] > 0 && len(r.hits) == 3, fmt.Errorf("%s", r.raw)
	})
	t.Logf("ClusterIP healed: %s", r.raw)
}

func noErrors(r probeResult) bool {
	for k := range r.hits {
		if strings.HasPrefix(k, "error:") {
			return false
		}
	}
	return true
}
