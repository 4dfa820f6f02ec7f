//go:build tools

// Package tools pins etcdctl, built by ../build.sh, so that `go mod tidy`
// keeps its modules in go.mod/go.sum.
package tools

import _ "go.etcd.io/etcd/etcdctl/v3"
