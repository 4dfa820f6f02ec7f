package conformance

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func runScript(t *testing.T, ns, dir string, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "CONFORMANCE_NAMESPACE="+ns)
	out, err := cmd.CombinedOutput()
	t.Logf("%s %s:\n%s", name, strings.Join(args, " "), strings.TrimRight(string(out), "\n"))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// The official Python client (python3-kubernetes / PyPI kubernetes): ConfigMap CRUD + watch.
func TestPythonClient(t *testing.T) {
	t.Parallel()
	py := os.Getenv("CONFORMANCE_PYTHON")
	if py == "" {
		py = "/usr/bin/python3"
	}
	if out, err := exec.Command(py, "-c", "import kubernetes; print(kubernetes.__version__)").CombinedOutput(); err != nil {
		t.Fatalf("%s has no kubernetes module (apt-get install python3-kubernetes, or a venv with pip install kubernetes and CONFORMANCE_PYTHON=venv/bin/python): %s", py, out)
	}
	ns := namespace(t, "py")
	runScript(t, ns, ".", py, "python_client_test.py")
}

// @kubernetes/client-node 1.4.0 (node/package-lock.json): ConfigMap CRUD + watch.
func TestNodeClient(t *testing.T) {
	t.Parallel()
	node := os.Getenv("CONFORMANCE_NODE")
	if node == "" {
		node = "node"
	}
	dir, _ := filepath.Abs("node")
	if !fileExists(filepath.Join(dir, "node_modules", "@kubernetes", "client-node", "package.json")) {
		out, err := exec.Command("npm", "ci", "--prefix", dir, "--no-audit", "--no-fund").CombinedOutput()
		if err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	ns := namespace(t, "node")
	runScript(t, ns, dir, node, "crud_watch.mjs")
}
