package main

import (
	"fmt"
	"os"
	"path/filepath"
)

// defaultAuditPolicy records, at Metadata level (who, verb, resource, namespace, name,
// response code, RBAC decision; no bodies), every request of a service account outside
// kube-system: what the workloads (the operator) really call, for tests that compare it with
// their RBAC. kube-system's service accounts are the controller-manager's controllers
// (--use-service-account-credentials): most of the traffic, nothing a test asks about.
// RequestReceived is omitted: ResponseComplete carries the same and the outcome (a watch also
// logs ResponseStarted, so an open watch is visible before it ends).
const defaultAuditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  userGroups: ["system:serviceaccounts:kube-system"]
- level: Metadata
  userGroups: ["system:serviceaccounts"]
`

// auditArgs writes the audit policy (policyFile's content, or the default when empty) to
// DIR/config/audit-policy.yaml and returns the kube-apiserver flags that log to
// DIR/logs/audit.log: JSON lines, written synchronously as each request ends (blocking mode;
// a client may still see its answer a moment before the line is in the file). Rotated at
// 100 MB with two old files kept (audit-<time>.log beside it), so a long `make run` stays
// bounded.
func auditArgs(dir, policyFile string) ([]string, error) {
	policy := []byte(defaultAuditPolicy)
	if policyFile != "" {
		var err error
		if policy, err = os.ReadFile(policyFile); err != nil {
			return nil, fmt.Errorf("--audit-policy: %w", err)
		}
	}
	p := filepath.Join(dir, "config", "audit-policy.yaml")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(p, policy, 0o644); err != nil {
		return nil, err
	}
	return []string{
		"--audit-policy-file", p,
		"--audit-log-path", filepath.Join(dir, "logs", "audit.log"),
		"--audit-log-format", "json",
		"--audit-log-mode", "blocking",
		"--audit-log-maxsize", "100",
		"--audit-log-maxbackup", "2",
	}, nil
}
