package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// apiPy calls the apiserver from inside the pod the way in-cluster clients do:
// https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT with the mounted token and CA.
// argv: METHOD PATH [BODY]...; prints one JSON line per call {method, path, status, user, message}.
const apiPy = `
import json, os, ssl, sys, urllib.request, urllib.error
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(sa + "/token").read().strip()
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
base = "https://%s:%s" % (os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
args = sys.argv[1:]
for i in range(0, len(args), 3):
    method, path, body = args[i], args[i + 1], args[i + 2]
    req = urllib.request.Request(base + path, method=method, data=body.encode() if body else None,
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json", "Accept": "application/json"})
    try:
        resp = urllib.request.urlopen(req, context=ctx, timeout=10)
        status, doc = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        status, doc = e.code, json.loads(e.read() or b"{}")
    user = doc.get("status", {}).get("userInfo", {}).get("username", "") if isinstance(doc.get("status"), dict) else ""
    names = [it["metadata"]["name"] for it in doc.get("items", [])]
    print(json.dumps({"method": method, "path": path, "status": status, "user": user, "items": names, "message": doc.get("message", "")}))
`

type apiCall struct {
	Method, Path, Body string
	Status             int
	User, Message      string
	Items              []string
}

// A ServiceAccount token mounted in a pod reaches the apiserver through the kubernetes Service
// (authenticated as system:serviceaccount:NS:reader) and is refused (403) outside its Role.
func TestServiceAccountTokenRBAC(t *testing.T) {
	t.Parallel()
	ns := namespace(t, "rbac")
	ctx := context.Background()
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reader"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "configmap-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "reader", Namespace: ns}},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "configmap-reader"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	spec := podSpec(corev1.Container{Name: "client", Image: image, Command: []string{"python3", "-u", "-c", idlePy}})
	spec.ServiceAccountName = "reader"
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "sa-client"}, Spec: spec}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitPodReady(t, ns, "sa-client")

	wantUser := "system:serviceaccount:" + ns + ":reader"
	cm := fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":%q}}`, ns)
	calls := []apiCall{
		{Method: "POST", Path: "/apis/authentication.k8s.io/v1/selfsubjectreviews", Body: `{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`, Status: 201},
		{Method: "GET", Path: "/api/v1/namespaces/" + ns + "/configmaps", Status: 200},
		{Method: "GET", Path: "/api/v1/namespaces/" + ns + "/configmaps/kube-root-ca.crt", Status: 200},
		{Method: "POST", Path: "/api/v1/namespaces/" + ns + "/configmaps", Body: cm, Status: 403},
		{Method: "GET", Path: "/api/v1/namespaces/" + ns + "/secrets", Status: 403},
		{Method: "GET", Path: "/api/v1/namespaces/kube-system/configmaps", Status: 403},
		{Method: "GET", Path: "/api/v1/nodes", Status: 403},
	}
	var args []string
	for _, c := range calls {
		args = append(args, c.Method, c.Path, c.Body)
	}
	var out string
	await(t, time.Minute, "in-pod calls to the apiserver answer", func() (bool, error) {
		var err error
		out, err = execPy(ns, "sa-client", apiPy, args...)
		return err == nil, fmt.Errorf("%v: %s", err, out)
	})
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(calls) {
		t.Fatalf("got %d results, want %d:\n%s", len(lines), len(calls), out)
	}
	for i, l := range lines {
		var got apiCall
		if err := json.Unmarshal([]byte(l), &got); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		want := calls[i]
		ok := got.Status == want.Status
		switch {
		case i == 0:
			ok = ok && got.User == wantUser
		case want.Status == 403:
			ok = ok && strings.Contains(got.Message, `User "`+wantUser+`" cannot`)
		}
		if i == 1 {
			ok = ok && contains(got.Items, "kube-root-ca.crt")
		}
		mark := "ok"
		if !ok {
			mark = "WRONG"
			t.Errorf("%s %s: status %d user %q message %q, want %d as %s", want.Method, want.Path, got.Status, got.User, got.Message, want.Status, wantUser)
		}
		t.Logf("%-5s %s %s -> %d %s%s", mark, want.Method, want.Path, got.Status, got.User, trimMsg(got.Message))
	}
}

func trimMsg(m string) string {
	if m == "" {
		return ""
	}
	if len(m) > 140 {
		m = m[:140] + "..."
	}
	return " (" + m + ")"
}
