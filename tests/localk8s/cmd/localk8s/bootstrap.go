package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"
)

var gvrs = map[string]schema.GroupVersionResource{
	"ClusterRole":                {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"ClusterRoleBinding":         {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"Service":                    {Version: "v1", Resource: "services"},
	"EndpointSlice":              {Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"},
	"StorageClass":               {Group: "storage.k8s.io", Version: "v1", Resource: "storageclasses"},
	"FlowSchema":                 {Group: "flowcontrol.apiserver.k8s.io", Version: "v1", Resource: "flowschemas"},
	"PriorityLevelConfiguration": {Group: "flowcontrol.apiserver.k8s.io", Version: "v1", Resource: "prioritylevelconfigurations"},
}

// The launcher's own cluster objects. The kube-dns Service has no selector: its endpoint is
// CoreDNS on the host (the bridge address), kept in a manually managed EndpointSlice.
var bootstrapManifest = `
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns", labels: {app.kubernetes.io/managed-by: localk8s}}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns", labels: {app.kubernetes.io/managed-by: localk8s}}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "localk8s:apf-test", labels: {app.kubernetes.io/managed-by: localk8s}}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "localk8s-apf-test"}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS, kubernetes.io/cluster-service: "true", app.kubernetes.io/managed-by: localk8s}
spec:
  clusterIP: ` + dnsIP + `
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-localk8s
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: localk8s.io}
addressType: IPv4
endpoints:
- addresses: ["` + hostIP + `"]
  conditions: {ready: true, serving: true, terminating: false}
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
  labels: {app.kubernetes.io/managed-by: localk8s}
provisioner: ` + provisionerName + `
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
`

func (l *launcher) bootstrap(ctx context.Context) error {
	if err := l.apply(ctx, bootstrapManifest); err != nil {
		return err
	}
	// Nodes of an earlier run with more --nodes: remove them (their pods are garbage-collected
	// and rescheduled by their controllers), and any transient host Node left by a crash.
	nodes, err := l.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, n := range nodes.Items {
		_, ours := n.Labels["node.kubernetes.io/localk8s"]
		if (ours && !slices.Contains(l.nodes, n.Name)) || n.Name == hostNodeName {
			if err := l.client.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
			logf("removed Node %s (not part of this run)", n.Name)
		}
	}
	return nil
}

// apply server-side-applies each document of a multi-document YAML (field manager localk8s).
func (l *launcher) apply(ctx context.Context, manifest string) error {
	force := true
	for _, doc := range strings.Split(manifest, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			return fmt.Errorf("bootstrap manifest: %w", err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			return err
		}
		gvr, ok := gvrs[u.GetKind()]
		if !ok {
			return fmt.Errorf("bootstrap: unknown kind %s", u.GetKind())
		}
		var ri dynamic.ResourceInterface = l.dyn.Resource(gvr)
		if ns := u.GetNamespace(); ns != "" {
			ri = l.dyn.Resource(gvr).Namespace(ns)
		}
		opts := metav1.PatchOptions{FieldManager: "localk8s", Force: &force}
		_, err = ri.Patch(ctx, u.GetName(), types.ApplyPatchType, js, opts)
		if apierrors.IsInvalid(err) {
			// an immutable field (roleRef, provisioner) changed since an older launcher: replace
			_ = ri.Delete(ctx, u.GetName(), metav1.DeleteOptions{})
			_, err = ri.Patch(ctx, u.GetName(), types.ApplyPatchType, js, opts)
		}
		if err != nil {
			return fmt.Errorf("applying %s %s: %w", u.GetKind(), u.GetName(), err)
		}
	}
	return nil
}
