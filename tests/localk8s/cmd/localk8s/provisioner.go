package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
)

// runProvisioner is the StorageClass `standard` provisioner (localk8s.io/hostpath): every
// claim the PV controller hands to it (annotation volume.kubernetes.io/storage-provisioner,
// set once the scheduler picked a node, as the class is WaitForFirstConsumer) gets a hostPath
// PV in DIR/volumes/pvc-<claim uid>, pre-bound to the claim; a bound claim whose request grew
// (the class allows expansion) has the PV's capacity and its own status.capacity raised to it
// (a hostPath directory has no size to change); a Released PV with reclaim policy Delete has
// its directory and object removed. kube-controller-manager's own hostpath
// provisioner cannot be used: it always writes to /tmp/hostpath_pv (hard-coded in
// k8s.io/kubernetes/pkg/volume/hostpath).
func (l *launcher) runProvisioner(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		l.provisionOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (l *launcher) provisionOnce(ctx context.Context) {
	volumes := l.path("volumes")
	pvcs, err := l.client.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for i := range pvcs.Items {
		c := &pvcs.Items[i]
		if c.Spec.VolumeName != "" && c.Status.Phase == corev1.ClaimBound {
			l.expand(ctx, c)
			continue
		}
		if c.Spec.VolumeName != "" || c.Status.Phase != corev1.ClaimPending || c.DeletionTimestamp != nil {
			continue
		}
		prov := c.Annotations["volume.kubernetes.io/storage-provisioner"]
		if prov == "" {
			prov = c.Annotations["volume.beta.kubernetes.io/storage-provisioner"]
		}
		if prov != provisionerName {
			continue
		}
		name := "pvc-" + string(c.UID)
		dir := filepath.Join(volumes, name)
		if err := os.MkdirAll(dir, 0o777); err != nil {
			klog.ErrorS(err, "provisioner: mkdir", "dir", dir)
			continue
		}
		_ = os.Chmod(dir, 0o777)
		reclaim := corev1.PersistentVolumeReclaimDelete
		className := ""
		if c.Spec.StorageClassName != nil {
			className = *c.Spec.StorageClassName
			if sc, err := l.client.StorageV1().StorageClasses().Get(ctx, className, metav1.GetOptions{}); err == nil && sc.ReclaimPolicy != nil {
				reclaim = *sc.ReclaimPolicy
			}
		}
		hpType := corev1.HostPathDirectoryOrCreate
		pv := &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{
				Name:        name,
				Annotations: map[string]string{"pv.kubernetes.io/provisioned-by": provisionerName},
				Labels:      map[string]string{"app.kubernetes.io/managed-by": "localk8s"},
			},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: c.Spec.Resources.Requests[corev1.ResourceStorage]},
				AccessModes:                   c.Spec.AccessModes,
				PersistentVolumeReclaimPolicy: reclaim,
				StorageClassName:              className,
				VolumeMode:                    c.Spec.VolumeMode,
				ClaimRef: &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
					Namespace: c.Namespace, Name: c.Name, UID: c.UID},
				PersistentVolumeSource: corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &hpType}},
			},
		}
		if _, err := l.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			klog.ErrorS(err, "provisioner: create PV", "pvc", c.Namespace+"/"+c.Name)
			continue
		}
		klog.InfoS("provisioner: provisioned", "pv", name, "pvc", c.Namespace+"/"+c.Name, "dir", dir)
	}
	pvs, err := l.client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		if pv.Annotations["pv.kubernetes.io/provisioned-by"] != provisionerName || pv.DeletionTimestamp != nil ||
			pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete ||
			(pv.Status.Phase != corev1.VolumeReleased && pv.Status.Phase != corev1.VolumeFailed) {
			continue
		}
		if hp := pv.Spec.HostPath; hp != nil && strings.HasPrefix(hp.Path, volumes+"/") {
			if err := os.RemoveAll(hp.Path); err != nil {
				klog.ErrorS(err, "provisioner: remove", "dir", hp.Path)
				continue
			}
		}
		if err := l.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			klog.ErrorS(err, "provisioner: delete PV", "pv", pv.Name)
			continue
		}
		klog.InfoS("provisioner: deleted", "pv", pv.Name)
	}
}

// expand raises the capacity of a bound claim's PV (one of ours) and the claim's
// status.capacity to the claim's request, when the request is larger.
func (l *launcher) expand(ctx context.Context, c *corev1.PersistentVolumeClaim) {
	want, ok := c.Spec.Resources.Requests[corev1.ResourceStorage]
	have, bound := c.Status.Capacity[corev1.ResourceStorage]
	if !ok || !bound || want.Cmp(have) <= 0 {
		return
	}
	pv, err := l.client.CoreV1().PersistentVolumes().Get(ctx, c.Spec.VolumeName, metav1.GetOptions{})
	if err != nil || pv.Annotations["pv.kubernetes.io/provisioned-by"] != provisionerName {
		return
	}
	if have, ok := pv.Spec.Capacity[corev1.ResourceStorage]; ok && want.Cmp(have) > 0 {
		pv.Spec.Capacity[corev1.ResourceStorage] = want
		if _, err := l.client.CoreV1().PersistentVolumes().Update(ctx, pv, metav1.UpdateOptions{}); err != nil {
			klog.ErrorS(err, "provisioner: expand PV", "pv", pv.Name)
			return
		}
	}
	c.Status.Capacity[corev1.ResourceStorage] = want
	if _, err := l.client.CoreV1().PersistentVolumeClaims(c.Namespace).UpdateStatus(ctx, c, metav1.UpdateOptions{}); err != nil {
		klog.ErrorS(err, "provisioner: expand PVC status", "pvc", c.Namespace+"/"+c.Name)
		return
	}
	klog.InfoS("provisioner: expanded", "pv", pv.Name, "pvc", c.Namespace+"/"+c.Name, "size", want.String())
}
