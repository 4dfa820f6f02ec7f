package conformance

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
)

// A StatefulSet with volumeClaimTemplates comes up in order (web-N is created only after web-N-1
// is Ready, as seen by one watch), its PVCs are Bound and written, and each pod's stable name
// <pod>.<svc>.<ns>.svc.cluster.local resolves to its IP from another pod and serves it.
// Then `kubectl scale` down removes the highest ordinals first and the PVCs stay.
func TestStatefulSetOrderedPVCDNS(t *testing.T) {
	t.Parallel()
	ns := namespace(t, "sts")
	ctx := context.Background()
	const replicas = 3
	labels := map[string]string{"app": "web"}

	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: labels,
			Ports: []corev1.ServicePort{{Name: "http", Port: serverPort}}},
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	client := clientPod(t, ns)

	// One watch on the namespace's pods, opened before the StatefulSet exists: events arrive in
	// resourceVersion order, so "web-1 ADDED after web-0 was seen Ready" is exact.
	w, err := cs.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	c := serverContainer()
	c.ReadinessProbe = httpProbe("/readyz", 1)
	c.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.StatefulSetSpec{
			Replicas:             ptr.To(int32(replicas)),
			ServiceName:          "web",
			PodManagementPolicy:  appsv1.OrderedReadyPodManagement,
			Selector:             &metav1.LabelSelector{MatchLabels: labels},
			Template:             corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: podSpec(c)},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{dataClaim()},
		},
	}
	if _, err := cs.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Follow the watch until all replicas are Ready.
	readySeen := map[string]bool{}
	addedSeen := map[string]bool{}
	var order []string
	deadline := time.After(podTimeout + time.Minute)
	for len(readySeen) < replicas {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("pod watch closed")
			}
			if ev.Type == watch.Error {
				t.Fatalf("pod watch error: %v", ev.Object)
			}
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			if ev.Type == watch.Added && !addedSeen[p.Name] {
				addedSeen[p.Name] = true
				order = append(order, "created "+p.Name)
				var ord int
				fmt.Sscanf(p.Name, "web-%d", &ord)
				if ord > 0 {
					prev := fmt.Sprintf("web-%d", ord-1)
					if !readySeen[prev] {
						t.Errorf("%s was created before %s was Ready (OrderedReady violated); so far: %v", p.Name, prev, order)
					}
				}
			}
			if isReady(p) && !readySeen[p.Name] {
				readySeen[p.Name] = true
				order = append(order, "ready "+p.Name)
			}
		case <-deadline:
			t.Fatalf("StatefulSet not Ready in time; seen: %v", order)
		}
	}
	t.Logf("order seen by the watch: %s", strings.Join(order, ", "))
	want := []string{"created web-0", "ready web-0", "created web-1", "ready web-1", "created web-2", "ready web-2"}
	if strings.Join(order, ",") != strings.Join(want, ",") {
		t.Errorf("order %v, want %v", order, want)
	}

	// PVCs Bound, each to its own PV.
	pvs := map[string]bool{}
	for i := 0; i < replicas; i++ {
		name := fmt.Sprintf("data-web-%d", i)
		pvc, err := cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("pvc %s: %v", name, err)
		}
		if pvc.Status.Phase != corev1.ClaimBound || pvc.Spec.VolumeName == "" {
			t.Errorf("pvc %s phase %s volume %q, want Bound", name, pvc.Status.Phase, pvc.Spec.VolumeName)
		}
		pvs[pvc.Spec.VolumeName] = true
		t.Logf("pvc %s: %s -> %s (storageClass %s)", name, pvc.Status.Phase, pvc.Spec.VolumeName, ptr.Deref(pvc.Spec.StorageClassName, ""))
	}
	if len(pvs) != replicas {
		t.Errorf("PVCs share volumes: %v", pvs)
	}

	// Stable DNS names resolve (from another pod) to the pods' IPs, and the pods answer on them.
	const resolvePy = `
import socket, sys, urllib.request
for n in sys.argv[1:]:
    ip = socket.gethostbyname(n)
    body = urllib.request.urlopen("http://%s:8080/boot-log" % n, timeout=5).read().decode().split()
    print(n, ip, ",".join(body))
`
	var names []string
	ips := map[string]string{}
	for i := 0; i < replicas; i++ {
		pod := fmt.Sprintf("web-%d", i)
		p, err := getPod(ns, pod)
		if err != nil {
			t.Fatal(err)
		}
		fq := fmt.Sprintf("%s.web.%s.svc.cluster.local", pod, ns)
		names = append(names, fq)
		ips[fq] = p.Status.PodIP + " " + pod
	}
	var out string
	await(t, time.Minute, "stable DNS names resolve from pod "+client, func() (bool, error) {
		var err error
		out, err = execPy(ns, client, resolvePy, names...)
		return err == nil, fmt.Errorf("%v: %s", err, out)
	})
	t.Logf("from pod %s:\n%s", client, strings.TrimSpace(out))
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i, fq := range names {
		if i >= len(lines) {
			t.Fatalf("missing output for %s", fq)
		}
		f := strings.Fields(lines[i])
		wantIP, pod := strings.Fields(ips[fq])[0], strings.Fields(ips[fq])[1]
		if len(f) != 3 || f[1] != wantIP || f[2] != pod {
			t.Errorf("%s: got %q, want IP %s and boot log %q (PVC written by the pod)", fq, lines[i], wantIP, pod)
		}
	}

	// kubectl scale down: the highest ordinal goes first; PVCs are kept.
	mustKubectl(t, "scale", "-n", ns, "statefulset/web", "--replicas=1")
	await(t, 2*time.Minute, "web-2 and web-1 deleted, web-0 kept", func() (bool, error) {
		pods, err := listPods(ns, "app=web")
		if err != nil {
			return false, err
		}
		var n []string
		for _, p := range pods {
			n = append(n, p.Name)
		}
		sort.Strings(n)
		return strings.Join(n, ",") == "web-0", fmt.Errorf("pods %v", n)
	})
	pvcs, err := cs.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(pvcs.Items) != replicas {
		t.Errorf("after scale down %d PVCs, want %d kept", len(pvcs.Items), replicas)
	}
	// Scale up again: web-1 comes back with its old volume (its boot log has two lines).
	mustKubectl(t, "scale", "-n", ns, "statefulset/web", "--replicas=2")
	mustKubectl(t, "rollout", "status", "-n", ns, "statefulset/web", "--timeout=3m")
	await(t, time.Minute, "web-1 back with its volume", func() (bool, error) {
		out, err := execPy(ns, client, resolvePy, fmt.Sprintf("web-1.web.%s.svc.cluster.local", ns))
		return err == nil && strings.HasSuffix(strings.TrimSpace(out), "web-1,web-1"), fmt.Errorf("%v: %s", err, out)
	})
}

// A StatefulSet pod deleted the way chaos tools and impatient users do (`kubectl delete pod
// --grace-period=0 --force`) is re-created by the StatefulSet with the same name and a new UID
// and runs again within 30 s, every time. The pods are kept on one node (nodeSelector), so the
// node that ran the old pod is the one that must start the new one: a kubelet that tracked pods
// by name instead of UID would keep the new one Pending. Each round also checks that the new
// pod's volume is the old one's (its boot log grows by one line).
func TestStatefulSetForceDeletedPodReturns(t *testing.T) {
	t.Parallel()
	ns := namespace(t, "force")
	ctx := context.Background()
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) == 0 {
		t.Fatalf("listing nodes: %v (%d)", err, len(nodes.Items))
	}
	var node string
	for _, n := range nodes.Items {
		if !n.Spec.Unschedulable {
			node = n.Name
			break
		}
	}
	labels := map[string]string{"app": "fd"}
	c := serverContainer()
	c.ReadinessProbe = httpProbe("/readyz", 1)
	c.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	spec := podSpec(c)
	spec.NodeSelector = map[string]string{"kubernetes.io/hostname": node}
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "fd"},
		Spec: appsv1.StatefulSetSpec{
			Replicas:             ptr.To(int32(1)),
			ServiceName:          "fd",
			Selector:             &metav1.LabelSelector{MatchLabels: labels},
			Template:             corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{dataClaim()},
		},
	}
	if _, err := cs.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := awaitPodReady(t, ns, "fd-0")
	const rounds = 3
	for round := 1; round <= rounds; round++ {
		oldUID := pod.UID
		mustKubectl(t, "delete", "pod", "-n", ns, "fd-0", "--grace-period=0", "--force")
		start := time.Now()
		await(t, 30*time.Second, fmt.Sprintf("round %d: fd-0 Running and Ready again with a new UID", round), func() (bool, error) {
			p, err := getPod(ns, "fd-0")
			if err != nil {
				return false, err
			}
			pod = p
			return p.UID != oldUID && p.Status.Phase == corev1.PodRunning && isReady(p),
				fmt.Errorf("uid %s (old %s), node %s, phase %s, statuses %s", p.UID, oldUID, p.Spec.NodeName, p.Status.Phase, containerSummary(p))
		})
		t.Logf("round %d: back in %.1fs on %s", round, time.Since(start).Seconds(), pod.Spec.NodeName)
		out, err := execPy(ns, "fd-0", "print(len(open('/data/boot.log').read().split()))")
		if err != nil || strings.TrimSpace(out) != fmt.Sprint(round+1) {
			t.Errorf("round %d: boot log lines %q (%v), want %d (one per start, same volume)", round, out, err, round+1)
		}
	}
}

// dataClaim is the volume claim template "data" (16 MiB, ReadWriteOnce) of the suite's
// StatefulSets.
func dataClaim() corev1.PersistentVolumeClaim {
	return corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Mi")}},
		},
	}
}
