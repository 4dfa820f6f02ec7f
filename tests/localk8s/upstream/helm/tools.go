//go:build tools

// Package tools pins helm's command, built by ../build.sh, so that
// `go mod tidy` keeps its modules in go.mod/go.sum.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
