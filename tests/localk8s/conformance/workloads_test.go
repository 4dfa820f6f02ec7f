package conformance

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func deployment(name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	c := serverContainer()
	c.ReadinessProbe = httpProbe("/readyz", 1)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: podSpec(c)},
		},
	}
}

func readyPods(ns, selector string) (ready, total int, uids map[string]bool, err error) {
	pods, err := listPods(ns, selector)
	if err != nil {
		return 0, 0, nil, err
	}
	uids = map[string]bool{}
	for _, p := range pods {
		if p.DeletionTimestamp != nil {
			continue
		}
		total++
		if isReady(&p) {
			ready++
			uids[string(p.UID)] = true
		}
	}
	return ready, total, uids, nil
}

// kubectl scale, rollout status and rollout restart on a Deployment.
func TestKubectlScaleRollout(t *testing.T) {
	t.Parallel()
	ns := namespace(t, "rollout")
	ctx := context.Background()
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, deployment("app", 1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mustKubectl(t, "rollout", "status", "-n", ns, "deployment/app", "--timeout=3m")

	mustKubectl(t, "scale", "-n", ns, "deployment/app", "--replicas=3")
	out := mustKubectl(t, "rollout", "status", "-n", ns, "deployment/app", "--timeout=3m")
	if !strings.Contains(out, "successfully rolled out") {
		t.Errorf("rollout status: %s", out)
	}
	var before map[string]bool
	await(t, time.Minute, "3 pods Ready after scale to 3", func() (bool, error) {
		r, n, uids, err := readyPods(ns, "app=app")
		before = uids
		return err == nil && r == 3 && n == 3, fmt.Errorf("%d/%d ready (%v)", r, n, err)
	})
	d, err := cs.AppsV1().Deployments(ns).Get(ctx, "app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Status.ReadyReplicas != 3 || d.Status.AvailableReplicas != 3 {
		t.Errorf("deployment status ready=%d available=%d, want 3", d.Status.ReadyReplicas, d.Status.AvailableReplicas)
	}

	mustKubectl(t, "rollout", "restart", "-n", ns, "deployment/app")
	mustKubectl(t, "rollout", "status", "-n", ns, "deployment/app", "--timeout=3m")
	await(t, 2*time.Minute, "3 new pods Ready after rollout restart, old ones gone", func() (bool, error) {
		r, n, uids, err := readyPods(ns, "app=app")
		if err != nil {
			return false, err
		}
		for u := range uids {
			if before[u] {
				return false, fmt.Errorf("old pod %s still there", u)
			}
		}
		return r == 3 && n == 3, fmt.Errorf("%d/%d ready", r, n)
	})
	d, _ = cs.AppsV1().Deployments(ns).Get(ctx, "app", metav1.GetOptions{})
	if d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"] == "" {
		t.Errorf("template has no kubectl.kubernetes.io/restartedAt annotation: %v", d.Spec.Template.Annotations)
	}
	rss, err := cs.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=app"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rss.Items) != 2 {
		t.Errorf("%d ReplicaSets after restart, want 2 (old scaled to 0, new)", len(rss.Items))
	}
	mustKubectl(t, "rollout", "history", "-n", ns, "deployment/app")

	mustKubectl(t, "scale", "-n", ns, "deployment/app", "--replicas=1")
	await(t, 2*time.Minute, "1 pod after scale to 1", func() (bool, error) {
		pods, err := listPods(ns, "app=app")
		return err == nil && len(pods) == 1 && isReady(&pods[0]), fmt.Errorf("%d pods (%v)", len(pods), err)
	})
}

// kubectl delete --cascade=foreground|background|orphan on ReplicaSets: owned pods go (after the
// owner for background, before it for foreground) or stay with their ownerReferences removed.
func TestDeletePropagation(t *testing.T) {
	t.Parallel()
	ns := namespace(t, "gc")
	ctx := context.Background()
	mk := func(name string) []string {
		labels := map[string]string{"app": name}
		rs := &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: appsv1.ReplicaSetSpec{
				Replicas: ptr.To(int32(2)),
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: podSpec(serverContainer())},
			},
		}
		if _, err := cs.AppsV1().ReplicaSets(ns).Create(ctx, rs, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var names []string
		await(t, podTimeout, "2 pods of "+name+" Running", func() (bool, error) {
			pods, err := listPods(ns, "app="+name)
			names = nil
			running := 0
			for _, p := range pods {
				names = append(names, p.Name)
				if p.Status.Phase == corev1.PodRunning {
					running++
				}
			}
			return err == nil && running == 2 && len(pods) == 2, fmt.Errorf("%d/%d running", running, len(pods))
		})
		return names
	}
	rsGone := func(name string) (bool, error) {
		_, err := cs.AppsV1().ReplicaSets(ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Errorf("get rs: %v", err)
	}
	podsLeft := func(name string) []corev1.Pod {
		pods, err := listPods(ns, "app="+name)
		if err != nil {
			t.Fatal(err)
		}
		return pods
	}
	fg, bg, or := mk("fg"), mk("bg"), mk("orphan")
	t.Logf("pods: fg %v, bg %v, orphan %v", fg, bg, or)

	t.Run("Foreground", func(t *testing.T) {
		mustKubectl(t, "delete", "-n", ns, "replicaset/fg", "--cascade=foreground", "--wait=false")
		rs, err := cs.AppsV1().ReplicaSets(ns).Get(ctx, "fg", metav1.GetOptions{})
		if err == nil {
			t.Logf("while deleting: deletionTimestamp %v, finalizers %v", rs.DeletionTimestamp, rs.Finalizers)
			if rs.DeletionTimestamp == nil || !contains(rs.Finalizers, metav1.FinalizerDeleteDependents) {
				t.Errorf("foreground: owner has deletionTimestamp %v finalizers %v, want %s", rs.DeletionTimestamp, rs.Finalizers, metav1.FinalizerDeleteDependents)
			}
		} else if !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		await(t, 2*time.Minute, "ReplicaSet fg gone", func() (bool, error) { return rsGone("fg") })
		if left := podsLeft("fg"); len(left) != 0 {
			t.Errorf("foreground: owner gone but %d pods still exist (dependents must go first)", len(left))
		}
	})
	t.Run("Background", func(t *testing.T) {
		mustKubectl(t, "delete", "-n", ns, "replicaset/bg", "--cascade=background")
		await(t, 30*time.Second, "ReplicaSet bg gone", func() (bool, error) { return rsGone("bg") })
		await(t, 2*time.Minute, "pods of bg deleted by the garbage collector", func() (bool, error) {
			left := podsLeft("bg")
			return len(left) == 0, fmt.Errorf("%d pods left", len(left))
		})
	})
	t.Run("Orphan", func(t *testing.T) {
		mustKubectl(t, "delete", "-n", ns, "replicaset/orphan", "--cascade=orphan")
		// The owner is removed only after the garbage collector has orphaned the dependents.
		await(t, time.Minute, "ReplicaSet orphan gone", func() (bool, error) { return rsGone("orphan") })
		left := podsLeft("orphan")
		if len(left) != 2 {
			t.Fatalf("orphan: %d pods left, want 2", len(left))
		}
		for _, p := range left {
			if len(p.OwnerReferences) != 0 || p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
				t.Errorf("orphaned pod %s: ownerReferences %v, deletionTimestamp %v, phase %s; want none, nil, Running",
					p.Name, p.OwnerReferences, p.DeletionTimestamp, p.Status.Phase)
			}
		}
		t.Logf("orphaned pods still running without owner: %s, %s", left[0].Name, left[1].Name)
	})
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}
