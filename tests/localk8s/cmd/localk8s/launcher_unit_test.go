package main

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"kvcache.local/localk8s/internal/agent"
)

func readCert(t *testing.T, p string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPKI(t *testing.T) {
	dir := t.TempDir()
	if _, err := setupPKI(dir, []string{"node-1", "node-2"}); err != nil {
		t.Fatal(err)
	}
	api := readCert(t, filepath.Join(dir, "pki", "apiserver.crt"))
	for _, ip := range []string{kubernetesSvcIP, "127.0.0.1", hostIP} {
		if !slices.ContainsFunc(api.IPAddresses, func(a net.IP) bool { return a.String() == ip }) {
			t.Errorf("apiserver cert lacks IP %s: %v", ip, api.IPAddresses)
		}
	}
	for _, d := range []string{"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"} {
		if err := api.VerifyHostname(d); err != nil {
			t.Errorf("apiserver cert: %v", err)
		}
	}
	ca := readCert(t, filepath.Join(dir, "pki", "ca.crt"))
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	n := readCert(t, filepath.Join(dir, "pki", "node-client-node-2.crt"))
	if n.Subject.CommonName != "system:node:node-2" || !slices.Equal(n.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("node cert subject %v", n.Subject)
	}
	if _, err := n.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("node cert: %v", err)
	}
	adm := readCert(t, filepath.Join(dir, "pki", "admin.crt"))
	if !slices.Equal(adm.Subject.Organization, []string{"system:masters"}) {
		t.Errorf("admin cert subject %v", adm.Subject)
	}
	kl := readCert(t, filepath.Join(dir, "pki", "kubelet-node-1.crt"))
	if _, err := kl.Verify(x509.VerifyOptions{Roots: pool, DNSName: hostIP}); err != nil {
		t.Errorf("kubelet serving cert for %s: %v", hostIP, err)
	}
	for _, f := range []string{"kubeconfigs/admin.kubeconfig", "kubeconfigs/node-1.kubeconfig", "pki/sa.key", "pki/sa.pub"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	// a second run keeps every certificate (same serial) and adds the new node's
	if _, err := setupPKI(dir, []string{"node-1", "node-2", "node-3"}); err != nil {
		t.Fatal(err)
	}
	if api2 := readCert(t, filepath.Join(dir, "pki", "apiserver.crt")); api2.SerialNumber.Cmp(api.SerialNumber) != 0 {
		t.Errorf("apiserver cert re-issued")
	}
	if ca2 := readCert(t, filepath.Join(dir, "pki", "ca.crt")); !ca2.Equal(ca) {
		t.Errorf("CA changed")
	}
	readCert(t, filepath.Join(dir, "pki", "node-client-node-3.crt"))
}

func TestNftHasRules(t *testing.T) {
	empty := "table ip nat {\n\tchain OUTPUT {\n\t\ttype nat hook output priority -100; policy accept;\n\t}\n}\n"
	if nftHasRules(empty) {
		t.Error("empty table reported as having rules")
	}
	full := "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tcounter packets 0 bytes 0 jump KUBE-FIREWALL\n\t}\n}\n"
	if !nftHasRules(full) {
		t.Error("rule not seen")
	}
}

func TestProcRef(t *testing.T) {
	r := selfRef("me")
	if !r.alive() {
		t.Fatal("self not alive")
	}
	r.Start++
	if r.alive() {
		t.Error("a different start time must not match")
	}
}

// The project's images map to the binaries beside localk8s whatever their registry and tag; a
// program that is not built yet is reported as such (ErrImagePull), not run.
func TestDefaultImages(t *testing.T) {
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "kvcache-node"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	imgs := defaultImages(bin)
	for image, want := range map[string]string{
		"kvcache-node":                                        "kvcache-node",
		"ghcr.io/acme/kvcache-node:v0.1.0":                    "kvcache-node",
		"localhost:5000/kvcache/kvcache-operator@sha256:0123": "kvcache-operator",
		"kvcache-operator:latest":                             "kvcache-operator",
	} {
		p, ok := agent.LookupImage(imgs, image)
		if !ok || p != filepath.Join(bin, want) {
			t.Errorf("%s -> %q %v, want %s", image, p, ok, filepath.Join(bin, want))
		}
	}
	if _, ok := agent.LookupImage(imgs, "ghcr.io/acme/other:1"); ok {
		t.Errorf("an unrelated image is mapped")
	}
	if msg := agent.ProgramMissing("kvcache-node:1", filepath.Join(bin, "kvcache-node")); msg != "" {
		t.Errorf("built binary reported missing: %s", msg)
	}
	msg := agent.ProgramMissing("kvcache-operator:1", filepath.Join(bin, "kvcache-operator"))
	if !strings.Contains(msg, "kvcache-operator") || !strings.Contains(msg, "does not exist") {
		t.Errorf("missing operator binary: %q", msg)
	}
}

// The apiserver's audit log: the built-in policy (service accounts outside kube-system at
// Metadata level, no RequestReceived stage) or the file given to --audit-policy, copied into
// the state dir, and the flags that point the apiserver at DIR/logs/audit.log.
func TestAuditArgs(t *testing.T) {
	dir := t.TempDir()
	args, err := auditArgs(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	flags := map[string]string{}
	for i := 0; i+1 < len(args); i += 2 {
		flags[args[i]] = args[i+1]
	}
	if flags["--audit-log-path"] != filepath.Join(dir, "logs", "audit.log") {
		t.Errorf("audit log path %q", flags["--audit-log-path"])
	}
	b, err := os.ReadFile(flags["--audit-policy-file"])
	if err != nil {
		t.Fatal(err)
	}
	var policy struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		OmitStages []string `json:"omitStages"`
		Rules      []struct {
			Level      string   `json:"level"`
			UserGroups []string `json:"userGroups"`
		} `json:"rules"`
	}
	if err := yaml.UnmarshalStrict(b, &policy); err != nil {
		t.Fatalf("policy: %v\n%s", err, b)
	}
	if policy.APIVersion != "audit.k8s.io/v1" || policy.Kind != "Policy" || !slices.Equal(policy.OmitStages, []string{"RequestReceived"}) ||
		len(policy.Rules) != 2 ||
		policy.Rules[0].Level != "None" || policy.Rules[0].UserGroups[0] != "system:serviceaccounts:kube-system" ||
		policy.Rules[1].Level != "Metadata" || policy.Rules[1].UserGroups[0] != "system:serviceaccounts" {
		t.Errorf("built-in policy: %+v", policy)
	}

	own := filepath.Join(t.TempDir(), "all.yaml")
	everyone := "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n"
	if err := os.WriteFile(own, []byte(everyone), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := auditArgs(dir, own); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(flags["--audit-policy-file"]); string(b) != everyone {
		t.Errorf("--audit-policy not used: %s", b)
	}
	if _, err := auditArgs(dir, filepath.Join(dir, "absent.yaml")); err == nil {
		t.Error("a missing --audit-policy file is accepted")
	}
}
