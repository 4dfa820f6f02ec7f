//go:build tools

// Package tools pins Prometheus's command, built by ../build.sh, so that
// `go mod tidy` keeps its modules in go.mod/go.sum.
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
