//go:build tools

// Package tools pins traefik's command, built by ../build.sh, so that
// `go mod tidy` keeps its modules in go.mod/go.sum.
package tools

import _ "github.com/traefik/traefik/v3/cmd/traefik"
