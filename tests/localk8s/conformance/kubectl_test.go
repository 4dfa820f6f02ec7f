package conformance

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// startKubectl starts a long-running kubectl (logs -f, port-forward) and returns a line channel;
// the process is killed (by its PID, through cmd.Process) when the test ends.
func startKubectl(t *testing.T, args ...string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(kubectlBin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		// Closed before Wait: with nobody reading `lines` any more, a copy of kubectl's output
		// into pw blocks, and Wait (which waits for that copy) would never return.
		pr.Close()
		_ = cmd.Wait()
		pw.Close()
	})
	return cmd, lines
}

func awaitLine(t *testing.T, lines <-chan string, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.After(timeout)
	var seen []string
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("kubectl exited before printing %s; output: %q", re, seen)
			}
			seen = append(seen, l)
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-deadline:
			t.Fatalf("no line matching %s in %s; output: %q", re, timeout, seen)
		}
	}
}

// kubectl logs (plain, --tail, -f), exec (output, exit code, stdin) and port-forward.
func TestKubectlLogsExecPortForward(t *testing.T) {
	t.Parallel()
	ns := namespace(t, "kubectl")
	c := serverContainer()
	c.ReadinessProbe = httpProbe("/readyz", 1)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "talk"}, Spec: podSpec(c)}
	if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitPodReady(t, ns, "talk")

	t.Run("logs", func(t *testing.T) {
		out := mustKubectl(t, "logs", "-n", ns, "talk")
		if !strings.Contains(out, "serving talk") {
			t.Errorf("kubectl logs lacks the start line %q", "serving talk")
		}
		_, lines := startKubectl(t, "logs", "-f", "-n", ns, "pod/talk", "-c", "server")
		awaitLine(t, lines, regexp.MustCompile(`serving talk`), 30*time.Second)
		if out, err := execPy(ns, "talk", `import urllib.request; urllib.request.urlopen("http://127.0.0.1:8080/follow-marker")`); err != nil {
			t.Fatalf("request: %v %s", err, out)
		}
		m := awaitLine(t, lines, regexp.MustCompile(`request /follow-marker.*`), 30*time.Second)
		t.Logf("kubectl logs -f streamed: %q", m[0])
		await(t, 30*time.Second, "kubectl logs --tail=1 shows the last request", func() (bool, error) {
			out, err := kubectl(nil, "logs", "-n", ns, "talk", "--tail=1")
			return err == nil && strings.Contains(out, "request /follow-marker") && strings.Count(strings.TrimSpace(out), "\n") == 0, errors.New(out)
		})
	})

	t.Run("exec", func(t *testing.T) {
		out, err := kubectl(nil, "exec", "-n", ns, "talk", "-c", "server", "--", "python3", "-c",
			"import socket, sys; print(socket.gethostname()); sys.exit(3)")
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 || strings.Split(out, "\n")[0] != "talk" {
			t.Errorf("exec: output %q err %v, want %q and exit code 3", out, err, "talk")
		} else {
			t.Logf("exec printed %q, kubectl exit code %d", strings.TrimSpace(out), ee.ExitCode())
		}
		// A process killed by a signal: the runtime reports 128+signal, kubectl exits with it.
		out, err = kubectl(nil, "exec", "-n", ns, "talk", "--", "sh", "-c", "kill -9 $$")
		if !errors.As(err, &ee) || ee.ExitCode() != 137 || !strings.Contains(out, "command terminated with exit code 137") {
			t.Errorf("exec of a process killed by SIGKILL: output %q err %v, want \"command terminated with exit code 137\"", strings.TrimSpace(out), err)
		} else {
			t.Logf("exec killed by SIGKILL: %q", strings.TrimSpace(out))
		}
		out, err = kubectl([]byte("hello stdin\n"), "exec", "-i", "-n", ns, "talk", "--", "python3", "-c",
			"import sys; sys.stdout.write(sys.stdin.read().upper())")
		if err != nil || strings.TrimSpace(out) != "HELLO STDIN" {
			t.Errorf("exec -i: %q %v, want HELLO STDIN", out, err)
		} else {
			t.Logf("exec -i echoed %q", strings.TrimSpace(out))
		}
		out, err = kubectl(nil, "exec", "-n", ns, "talk", "--", "sh", "-c", "echo sh:$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT")
		if err != nil || !regexp.MustCompile(`^sh:[0-9a-f.:]+:\d+$`).MatchString(strings.TrimSpace(out)) {
			t.Errorf("exec sh: %q %v", out, err)
		} else {
			t.Logf("exec sh: %s", strings.TrimSpace(out))
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		_, lines := startKubectl(t, "port-forward", "-n", ns, "pod/talk", ":8080")
		m := awaitLine(t, lines, regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 8080`), 30*time.Second)
		url := "http://127.0.0.1:" + m[1] + "/"
		for i := 0; i < 3; i++ {
			resp, err := http.Get(url)
			if err != nil {
				t.Fatalf("GET %s: %v", url, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "talk" {
				t.Fatalf("GET %s: %d %q, want 200 \"talk\"", url, resp.StatusCode, b)
			}
		}
		t.Logf("port-forward %s answered \"talk\" 3 times", url)
	})
}

// tickPy prints a numbered line to stdout and one to stderr every 0.3 s, forever.
const tickPy = `
import sys, time
i = 0
while True:
    i += 1
    print("tick", i, flush=True)
    print("tock", i, file=sys.stderr, flush=True)
    time.sleep(0.3)
`

// kubectl attach: the running container's stdout and stderr from now on.
func TestKubectlAttach(t *testing.T) {
	t.Parallel()
	ns := namespace(t, "attach")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ticker"},
		Spec: podSpec(corev1.Container{Name: "ticker", Image: image, Command: []string{"python3", "-u", "-c", tickPy}})}
	if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitPodReady(t, ns, "ticker")
	_, lines := startKubectl(t, "attach", "-n", ns, "pod/ticker", "-c", "ticker")
	first := awaitLine(t, lines, regexp.MustCompile(`^tick (\d+)$`), 30*time.Second)
	awaitLine(t, lines, regexp.MustCompile(`^tock \d+$`), 10*time.Second)
	next := awaitLine(t, lines, regexp.MustCompile(`^tick (\d+)$`), 10*time.Second)
	if first[1] == next[1] {
		t.Errorf("attach repeated tick %s", first[1])
	}
	t.Logf("attach streamed tick %s .. tick %s and stderr", first[1], next[1])

	// attach -i: input reaches a container with stdin: true
	echo := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: podSpec(corev1.Container{Name: "echo", Image: image, Stdin: true,
			Command: []string{"python3", "-u", "-c", "import sys\nprint('echo ready', flush=True)\nfor l in sys.stdin:\n    print('got:', l.strip(), flush=True)"}})}
	if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), echo, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitPodReady(t, ns, "echo")
	cmd := exec.Command(kubectlBin, "attach", "-i", "-n", ns, "pod/echo", "-c", "echo")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	in := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			in <- sc.Text()
		}
		close(in)
	}()
	// The line goes again every 2 s until echoed: once in CI a line written as kubectl started
	// never reached the container (30 s without "got:"); a later one shows whether input
	// reaches it at all. Ends when stdin is closed by the cleanup.
	go func() {
		for {
			if _, err := io.WriteString(stdin, "hello attach\n"); err != nil {
				return
			}
			time.Sleep(2 * time.Second)
		}
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill(); stdin.Close(); pr.Close(); _ = cmd.Wait(); pw.Close() })
	awaitLine(t, in, regexp.MustCompile(`^got: hello attach$`), 30*time.Second)
}
