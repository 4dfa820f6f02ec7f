package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	utilexec "k8s.io/utils/exec"
)

// Provider runs pods as sandboxed local processes. It implements virtual-kubelet's
// PodLifecycleHandler and PodNotifier, and the kubelet API callbacks.
type Provider struct {
	cfg         Config
	client      kubernetes.Interface
	ctx         context.Context
	hostIP      string
	allocatable corev1.ResourceList
	serviceEnv  []EnvVar
	net         *network
	probeClient *http.Client
	recorder    record.EventRecorder
	logger      *log.Logger
	// volumeRefresh is how often configMap/secret/projected volumes are rewritten.
	volumeRefresh time.Duration

	// services lists a namespace's Services for service-link env vars (nil: none).
	services func(namespace string) ([]*corev1.Service, error)
	// podFromAPI returns the pod object as the API has it (the pod informer's cache), for the
	// conditions of readiness gates that other controllers set (nil: none).
	podFromAPI func(namespace, name string) (*corev1.Pod, error)

	mu       sync.Mutex
	pods     map[string]*podRuntime
	notifyCb func(*corev1.Pod)
	pending  []*corev1.Pod
}

// NewProvider creates the provider. client may be nil for tests that run a pod without an
// apiserver (volumes other than emptyDir/hostPath then fail, and deletion does not touch the API).
func NewProvider(ctx context.Context, cfg Config, client kubernetes.Interface, hostIP string) *Provider {
	cacheDir := filepath.Join(cfg.StateDir, "cni-cache")
	binDir := cfg.CNIBinDir
	if binDir == "" {
		binDir = "/usr/lib/cni"
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = "cluster.local"
	}
	if cfg.ClusterDNS == "" {
		cfg.ClusterDNS = "10.96.0.10"
	}
	p := &Provider{
		cfg: cfg, client: client, ctx: ctx, hostIP: hostIP,
		allocatable:   nodeResources(cfg),
		serviceEnv:    ServiceEnv("10.96.0.1", 443),
		net:           &network{binDir: binDir, confPath: cfg.CNIConfPath, cacheDir: cacheDir, recDir: filepath.Join(cfg.StateDir, "sandboxes")},
		probeClient:   &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Transport: &http.Transport{DisableKeepAlives: true}},
		logger:        log.New(logWriter(cfg), "agent["+cfg.NodeName+"] ", log.LstdFlags|log.Lmicroseconds),
		volumeRefresh: 30 * time.Second,
		pods:          map[string]*podRuntime{},
	}
	return p
}

// logWriter is where the agent's own log lines go: Config.LogWriter (the launcher's
// DIR/logs/<node>.log), else stderr.
func logWriter(cfg Config) io.Writer {
	if cfg.LogWriter != nil {
		return cfg.LogWriter
	}
	return os.Stderr
}

func (p *Provider) logf(format string, args ...any) { p.logger.Printf(format, args...) }

func (p *Provider) event(pod *corev1.Pod, typ, reason, msg string) {
	if p.recorder != nil {
		p.recorder.Event(pod, typ, reason, msg)
	}
}

// NotifyPods registers VK's status callback.
func (p *Provider) NotifyPods(_ context.Context, cb func(*corev1.Pod)) {
	p.mu.Lock()
	p.notifyCb = cb
	p.mu.Unlock()
}

func (p *Provider) notifyPod(pod *corev1.Pod) {
	if p.podFromAPI != nil {
		// A pod whose object is gone and whose name a new object holds (a force delete and a
		// StatefulSet's re-creation): VK keys status by name, so this status would land on the
		// new pod (or fail on its UID); the old one's end is nobody's business any more.
		if cur, err := p.podFromAPI(pod.Namespace, pod.Name); err == nil && cur.UID != pod.UID {
			return
		}
	}
	p.mu.Lock()
	cb := p.notifyCb
	p.mu.Unlock()
	if cb != nil {
		cb(pod)
	}
}

func podKey(ns, name string) string { return ns + "/" + name }

// CreatePod starts a pod's sandbox and containers (asynchronously).
func (p *Provider) CreatePod(_ context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := podKey(pod.Namespace, pod.Name)
	if pr, ok := p.pods[key]; ok {
		if pr.uid != string(pod.UID) {
			pr.successor = pod.DeepCopy()
			return nil
		}
		pr.mu.Lock()
		pr.pod = pod.DeepCopy()
		pr.mu.Unlock()
		return nil
	}
	p.startLocked(pod)
	return nil
}

func (p *Provider) startLocked(pod *corev1.Pod) {
	pr := newPodRuntime(p, pod)
	p.pods[pr.key] = pr
	p.logf("pod %s (%s): starting", pr.key, pr.uid)
	go pr.run()
}

// UpdatePod takes the new metadata (labels/annotations for the downward API); container specs
// of running pods are not changed (image updates would need a restart, as with the kubelet).
func (p *Provider) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	return p.CreatePod(ctx, pod)
}

// DeletePod stops the pod asynchronously: preStop, SIGTERM, grace, SIGKILL, sandbox teardown,
// then a terminal status is reported and the pod object is removed.
func (p *Provider) DeletePod(_ context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	pr, ok := p.pods[podKey(pod.Namespace, pod.Name)]
	p.mu.Unlock()
	if !ok {
		return errdefs.NotFoundf("pod %s/%s not found", pod.Namespace, pod.Name)
	}
	if pr.uid != string(pod.UID) && pod.UID != "" {
		// a newer pod of the same name waits for this one; nothing to delete for the new UID
		p.mu.Lock()
		if pr.successor != nil && string(pr.successor.UID) == string(pod.UID) {
			pr.successor = nil
		}
		p.mu.Unlock()
		return nil
	}
	grace := int64(30)
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	if pod.DeletionGracePeriodSeconds != nil {
		grace = *pod.DeletionGracePeriodSeconds
	} else if pod.DeletionTimestamp == nil {
		// the object vanished without a graceful deletion we saw (force delete, or it is a
		// leftover): stop with the kubelet's minimum grace
		grace = 2
	}
	if grace < 2 {
		grace = 2
	}
	go p.finishPod(pr, time.Duration(grace)*time.Second, true)
	return nil
}

// finishPod terminates pr, removes it from the provider and, if deleteObject, deletes the pod
// object (grace 0, UID precondition) as the kubelet does once the pod is terminal.
func (p *Provider) finishPod(pr *podRuntime, grace time.Duration, deleteObject bool) {
	// Checked and set in one step: VK's DeletePod and the pod informer's delete event both come
	// for a force-deleted pod, often at once, and two callers that both saw "not yet" closed
	// pr.finished twice (a panic that ended the launcher, leaving the host dirty).
	pr.mu.Lock()
	already := pr.finishing
	pr.finishing = true
	pr.mu.Unlock()
	if already {
		<-pr.finished // the first caller stops the pod and cleans up
		return
	}
	pr.terminate(grace, deleteObject)
	pod := pr.snapshot()
	p.logf("pod %s (%s): terminated (phase %s)", pr.key, pr.uid, pod.Status.Phase)
	if deleteObject && p.client != nil {
		// give VK's status queue a moment to write the terminal status
		time.Sleep(500 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		uid := types.UID(pr.uid)
		err := p.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: new(int64), Preconditions: &metav1.Preconditions{UID: &uid}})
		cancel()
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			p.logf("pod %s: delete from API: %v", pr.key, err)
		}
	}
	p.mu.Lock()
	if p.pods[pr.key] == pr {
		delete(p.pods, pr.key)
	}
	succ := pr.successor
	if succ == nil {
		succ = p.replacementOf(pr)
	}
	if succ != nil && p.ctx.Err() == nil {
		p.startLocked(succ)
	}
	p.mu.Unlock()
	close(pr.finished)
	if !deleteObject {
		return
	}
	os.RemoveAll(pr.dir)
}

// PodObjectDeleted is called with each pod object that left the API (the pod informer's delete
// event). VK queues its work by namespace/name: when a StatefulSet re-creates a force-deleted
// pod at once, VK may look the name up only after the new object is there, and then it never
// asks to delete the old pod (and, as the two specs compare equal, never hands over the new
// one either). So the old pod's processes and sandbox stop here, with the kubelet's minimum
// grace, and finishPod then starts the pod that now holds the name.
func (p *Provider) PodObjectDeleted(pod *corev1.Pod) {
	p.mu.Lock()
	pr, ok := p.pods[podKey(pod.Namespace, pod.Name)]
	p.mu.Unlock()
	if !ok || pr.uid != string(pod.UID) {
		return
	}
	p.logf("pod %s (%s): object deleted from the API; stopping it", pr.key, pr.uid)
	go p.finishPod(pr, 2*time.Second, true)
}

// replacementOf returns the pod object that holds pr's name in the API now under another UID,
// bound to this node and not being deleted, for finishPod to start; nil if there is none.
// REQUIRES: p.mu held (the lister has its own lock and never calls back).
func (p *Provider) replacementOf(pr *podRuntime) *corev1.Pod {
	if p.podFromAPI == nil {
		return nil
	}
	ns, name, _ := strings.Cut(pr.key, "/")
	cur, err := p.podFromAPI(ns, name)
	if err != nil || string(cur.UID) == pr.uid || cur.DeletionTimestamp != nil ||
		cur.Spec.NodeName != p.cfg.NodeName ||
		cur.Status.Phase == corev1.PodSucceeded || cur.Status.Phase == corev1.PodFailed {
		return nil
	}
	return cur.DeepCopy()
}

func (p *Provider) get(ns, name string) (*podRuntime, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pr, ok := p.pods[podKey(ns, name)]
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s not found", ns, name)
	}
	return pr, nil
}

// GetPod returns the pod with its current status.
func (p *Provider) GetPod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	pr, err := p.get(ns, name)
	if err != nil {
		return nil, err
	}
	return pr.snapshot(), nil
}

// GetPodStatus returns the pod's current status.
func (p *Provider) GetPodStatus(ctx context.Context, ns, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods lists the pods this provider runs.
func (p *Provider) GetPods(context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	prs := make([]*podRuntime, 0, len(p.pods))
	for _, pr := range p.pods {
		prs = append(prs, pr)
	}
	p.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(prs))
	for _, pr := range prs {
		out = append(out, pr.snapshot())
	}
	return out, nil
}

// Shutdown stops every pod (short grace) and removes their sandboxes, without touching the API.
func (p *Provider) Shutdown(grace time.Duration) {
	p.mu.Lock()
	prs := make([]*podRuntime, 0, len(p.pods))
	for _, pr := range p.pods {
		prs = append(prs, pr)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, pr := range prs {
		wg.Add(1)
		go func(pr *podRuntime) { defer wg.Done(); p.finishPod(pr, grace, false) }(pr)
	}
	wg.Wait()
	for _, h := range []string{"memory", "cpu"} {
		os.Remove(filepath.Join(cgroupRoot, h, "localk8s")) // fails while another agent uses it
	}
}

// CleanupLeftovers removes sandboxes a previous run of this node left behind.
func (p *Provider) CleanupLeftovers() {
	for _, h := range []string{"memory", "cpu"} {
		dirs, _ := filepath.Glob(filepath.Join(cgroupRoot, h, "localk8s", NetnsPrefixOf(p.cfg)+"*"))
		for _, d := range dirs {
			if b, err := os.ReadFile(filepath.Join(d, "cgroup.procs")); err == nil {
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
						if pr, err := os.FindProcess(pid); err == nil {
							pr.Kill()
						}
					}
				}
			}
			time.Sleep(100 * time.Millisecond)
			os.Remove(d)
		}
	}
	for _, ns := range p.net.leftovers(NetnsPrefixOf(p.cfg)) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		// kill what still runs in it
		if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
			for _, f := range strings.Fields(string(out)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
					if pr, err := os.FindProcess(pid); err == nil {
						pr.Kill()
					}
				}
			}
		}
		if err := p.net.teardown(ctx, ns); err != nil {
			p.logf("cleanup %s: %v", ns, err)
		} else {
			p.logf("cleaned up leftover sandbox %s", ns)
		}
		cancel()
	}
}

func (p *Provider) container(ns, pod, name string) (*podRuntime, *ctrRuntime, error) {
	pr, err := p.get(ns, pod)
	if err != nil {
		return nil, nil, err
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	for _, c := range append(append([]*ctrRuntime{}, pr.ctrs...), pr.inits...) {
		if c.spec.Name == name || name == "" {
			return pr, c, nil
		}
	}
	return nil, nil, errdefs.NotFoundf("container %s not found in pod %s/%s", name, ns, pod)
}

// GetContainerLogs serves `kubectl logs` (tail, limitBytes, timestamps, since, previous, follow).
func (p *Provider) GetContainerLogs(ctx context.Context, ns, podName, ctrName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	pr, c, err := p.container(ns, podName, ctrName)
	if err != nil {
		return nil, err
	}
	pr.mu.Lock()
	n := int(c.status.RestartCount)
	running := c.status.State.Running != nil
	pc := c.proc
	pr.mu.Unlock()
	if opts.Previous {
		n--
		if n < 0 {
			return nil, errdefs.InvalidInputf("previous terminated container %q in pod %q not found", ctrName, podName)
		}
	}
	path := filepath.Join(c.logDir, fmt.Sprintf("%d.log", n))
	if _, err := os.Stat(path); err != nil {
		if opts.Previous {
			return nil, errdefs.InvalidInputf("previous terminated container %q in pod %q not found", ctrName, podName)
		}
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	var done <-chan struct{}
	if opts.Follow && !opts.Previous && running && pc != nil {
		done = pc.done
	}
	pr2, pw := io.Pipe()
	go func() {
		err := streamLog(ctx, path, opts, done, pw)
		pw.CloseWithError(err)
	}()
	return pr2, nil
}

// ParseCRILine splits "<time> <stream> <P|F> <content>".
func ParseCRILine(line string) (t time.Time, stream string, partial bool, content string, ok bool) {
	parts := strings.SplitN(line, " ", 4)
	if len(parts) < 4 {
		return t, "", false, line, false
	}
	t, err := time.Parse(time.RFC3339Nano, parts[0])
	if err != nil {
		return t, "", false, line, false
	}
	return t, parts[1], parts[2] == "P", parts[3], true
}

// FormatLogLines converts CRI log lines to kubectl's output per opts (tail, since, timestamps, limit).
func FormatLogLines(lines []string, opts api.ContainerLogOpts, now time.Time) []byte {
	var out []string
	since := time.Time{}
	if opts.SinceSeconds > 0 {
		since = now.Add(-time.Duration(opts.SinceSeconds) * time.Second)
	}
	if !opts.SinceTime.IsZero() {
		since = opts.SinceTime
	}
	for _, l := range lines {
		t, _, partial, content, ok := ParseCRILine(l)
		if !ok {
			out = append(out, l)
			continue
		}
		if !since.IsZero() && t.Before(since) {
			continue
		}
		if partial {
			content = strings.TrimSuffix(content, "\n")
		}
		if opts.Timestamps {
			content = t.Format(time.RFC3339Nano) + " " + content
		}
		out = append(out, content)
	}
	if opts.Tail > 0 && len(out) > opts.Tail {
		out = out[len(out)-opts.Tail:]
	}
	b := []byte(strings.Join(out, ""))
	if opts.LimitBytes > 0 && len(b) > opts.LimitBytes {
		b = b[:opts.LimitBytes]
	}
	return b
}

func streamLog(ctx context.Context, path string, opts api.ContainerLogOpts, done <-chan struct{}, w io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var lines []string
	var pendingPart string
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			pendingPart = l
			break
		}
		lines = append(lines, l)
	}
	if _, err := w.Write(FormatLogLines(lines, opts, time.Now())); err != nil {
		return err
	}
	if done == nil {
		return nil
	}
	fopts := api.ContainerLogOpts{Timestamps: opts.Timestamps}
	buf := pendingPart
	for {
		l, err := br.ReadString('\n')
		buf += l
		if err == nil {
			if _, werr := w.Write(FormatLogLines([]string{buf}, fopts, time.Now())); werr != nil {
				return werr
			}
			buf = ""
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-done:
			// drain what is left, then stop
			rest, _ := io.ReadAll(br)
			buf += string(rest)
			if buf != "" {
				w.Write(FormatLogLines(strings.SplitAfter(buf, "\n"), fopts, time.Now()))
			}
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// RunInContainer serves `kubectl exec` (no TTY allocation: a TTY request runs with pipes).
func (p *Provider) RunInContainer(ctx context.Context, ns, podName, ctrName string, cmd []string, attach api.AttachIO) error {
	pr, c, err := p.container(ns, podName, ctrName)
	if err != nil {
		return err
	}
	pr.mu.Lock()
	pc := c.proc
	env := c.env
	pr.mu.Unlock()
	if pc == nil || pc.exited() || pc.childPid == 0 {
		return fmt.Errorf("container %s is not running", ctrName)
	}
	uid, gid := runAsIDs(pr.currentPod(), &c.spec)
	args := nsenterArgs(pc.childPid, uid, gid, cmd)
	x := exec.CommandContext(ctx, args[0], args[1:]...)
	x.Env = EnvStrings(env)
	if attach.TTY() {
		return runWithTTY(ctx, x, attach)
	}
	if attach.Stdin() != nil {
		x.Stdin = attach.Stdin()
	}
	if attach.Stdout() != nil {
		x.Stdout = attach.Stdout()
	}
	if attach.Stderr() != nil {
		x.Stderr = attach.Stderr()
	} else if attach.TTY() && attach.Stdout() != nil {
		x.Stderr = attach.Stdout()
	}
	err = x.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", ExitCodeOf(ee)), Code: ExitCodeOf(ee)}
	}
	return err
}

// AttachToContainer is not supported.
// AttachToContainer serves `kubectl attach`: the running container's output from now on, stdout
// and stderr apart (merged onto stdout for a TTY), until the container exits or the client
// goes; with `-i`, the client's input goes to the container's stdin if the container has
// `stdin: true` (a pipe; with `stdinOnce`, closed when the first attach's input ends), else it
// is discarded as the kubelet does.
func (p *Provider) AttachToContainer(ctx context.Context, ns, podName, ctrName string, attach api.AttachIO) error {
	pr, c, err := p.container(ns, podName, ctrName)
	if err != nil {
		return err
	}
	pr.mu.Lock()
	pc := c.proc
	pr.mu.Unlock()
	if pc == nil || pc.exited() {
		return errdefs.InvalidInputf("container %s of pod %s/%s is not running", ctrName, ns, podName)
	}
	stdout, stderr := attach.Stdout(), attach.Stderr()
	if stderr == nil || attach.TTY() {
		stderr = stdout
	}
	if in := attach.Stdin(); in != nil {
		if pc.stdin != nil {
			once := c.spec.StdinOnce
			go func() {
				pc.stdinMu.Lock()
				defer pc.stdinMu.Unlock()
				_, _ = io.Copy(pc.stdin, in)
				if once {
					pc.stdin.Close()
				}
			}()
		} else {
			go io.Copy(io.Discard, in)
		}
	}
	return followCRI(ctx, pc.logPath, pc.done, stdout, stderr)
}

// followCRI copies the CRI log lines appended to path from now on, until done is closed (then
// what is left is drained) or ctx ends; each line's content goes to stdout or stderr per its
// stream (nil writers discard).
func followCRI(ctx context.Context, path string, done <-chan struct{}, stdout, stderr io.Writer) error {
	f, err := openAtEnd(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return followCRIFrom(ctx, f, done, stdout, stderr)
}

func openAtEnd(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// followCRIFrom is followCRI from f's current offset.
func followCRIFrom(ctx context.Context, f io.Reader, done <-chan struct{}, stdout, stderr io.Writer) error {
	br := bufio.NewReader(f)
	buf := ""
	emit := func(line string) error {
		_, stream, partial, content, ok := ParseCRILine(strings.TrimSuffix(line, "\n"))
		if !ok {
			return nil
		}
		if !partial {
			content += "\n"
		}
		w := stdout
		if stream == "stderr" {
			w = stderr
		}
		if w == nil {
			return nil
		}
		_, err := io.WriteString(w, content)
		return err
	}
	for {
		l, err := br.ReadString('\n')
		buf += l
		if err == nil {
			if werr := emit(buf); werr != nil {
				return werr
			}
			buf = ""
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-done:
			rest, _ := io.ReadAll(br)
			for _, line := range strings.SplitAfter(buf+string(rest), "\n") {
				if line != "" {
					emit(line)
				}
			}
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// PortForward connects the stream to localhost:port inside the pod's network namespace.
func (p *Provider) PortForward(ctx context.Context, ns, podName string, port int32, stream io.ReadWriteCloser) error {
	pr, err := p.get(ns, podName)
	if err != nil {
		return err
	}
	defer stream.Close()
	conn, err := dialInNetns(ctx, pr.netns, fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return fmt.Errorf("port-forward to %s port %d: %w", podName, port, err)
	}
	defer conn.Close()
	errc := make(chan error, 2)
	go func() { _, err := io.Copy(conn, stream); errc <- err }()
	go func() { _, err := io.Copy(stream, conn); errc <- err }()
	select {
	case <-ctx.Done():
	case <-errc:
	}
	return nil
}

// servicesEnv is the service env of a pod: the links of its namespace's Services (when
// enableServiceLinks is not false), then the master Service's KUBERNETES_* variables.
func (p *Provider) servicesEnv(pod *corev1.Pod) []EnvVar {
	var out []EnvVar
	if p.services != nil && (pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks) {
		if svcs, err := p.services(pod.Namespace); err == nil {
			for _, e := range ServiceLinkEnv(svcs) {
				if !strings.HasPrefix(e.Name, "KUBERNETES_") {
					out = append(out, e)
				}
			}
		}
	}
	return append(out, p.serviceEnv...)
}

// ReadinessGatesChanged is called with the old and new pod object from the API: when a
// readiness gate's condition changed there (set by another controller), the pod's status is
// reported again with Ready recomputed.
func (p *Provider) ReadinessGatesChanged(oldPod, newPod *corev1.Pod) {
	if len(newPod.Spec.ReadinessGates) == 0 {
		return
	}
	changed := false
	for _, g := range newPod.Spec.ReadinessGates {
		var o, n *corev1.PodCondition
		for i := range oldPod.Status.Conditions {
			if oldPod.Status.Conditions[i].Type == g.ConditionType {
				o = &oldPod.Status.Conditions[i]
			}
		}
		for i := range newPod.Status.Conditions {
			if newPod.Status.Conditions[i].Type == g.ConditionType {
				n = &newPod.Status.Conditions[i]
			}
		}
		if (o == nil) != (n == nil) || (o != nil && o.Status != n.Status) {
			changed = true
		}
	}
	if !changed {
		return
	}
	p.mu.Lock()
	pr, ok := p.pods[podKey(newPod.Namespace, newPod.Name)]
	p.mu.Unlock()
	if ok && pr.uid == string(newPod.UID) {
		pr.notify()
	}
}
