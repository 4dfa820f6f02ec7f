package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ctrRuntime is the agent's record of one container of a pod.
type ctrRuntime struct {
	spec   corev1.Container
	init   bool
	status corev1.ContainerStatus
	proc   *proc
	env    []EnvVar
	// killReason is set when the agent itself stops the container (liveness failure).
	instanceCancel context.CancelFunc
	chain          int
	logDir         string
	done           bool // init container completed / container will not run again
}

// podRuntime is one pod on this node.
type podRuntime struct {
	p   *Provider
	key string
	uid string

	mu        sync.Mutex
	pod       *corev1.Pod
	dir       string
	netns     string
	podIP     string
	startTime metav1.Time
	inits     []*ctrRuntime
	ctrs      []*ctrRuntime
	conds     []corev1.PodCondition
	phase     corev1.PodPhase // set when terminal
	reason    string
	message   string
	vols      map[string]string
	tokens    map[string]*cachedToken
	netUp     bool
	infra     *proc // PID 1 of the pod's shared PID namespace (shareProcessNamespace), else nil

	terminating bool
	finishing   bool // Provider.finishPod has begun (the one caller that cleans up)
	silent      bool // stopping for agent shutdown: report nothing to the API
	tokenOwner  *int64
	ctx         context.Context
	cancel      context.CancelFunc
	notifyCh    chan struct{}
	finished    chan struct{} // closed when the pod is fully torn down after deletion
	successor   *corev1.Pod
	sandboxOnce sync.Once
	sandboxDone chan struct{} // closed once the sandbox setup phase is over (success or stop)
}

func (pr *podRuntime) sandboxPhaseOver() { pr.sandboxOnce.Do(func() { close(pr.sandboxDone) }) }

func newPodRuntime(p *Provider, pod *corev1.Pod) *podRuntime {
	ctx, cancel := context.WithCancel(p.ctx)
	pr := &podRuntime{
		p: p, key: pod.Namespace + "/" + pod.Name, uid: string(pod.UID), pod: pod.DeepCopy(),
		dir:       filepath.Join(p.cfg.StateDir, "pods", string(pod.UID)),
		netns:     NetnsName(NetnsPrefixOf(p.cfg), string(pod.UID)),
		startTime: metav1.Now(),
		tokens:    map[string]*cachedToken{},
		ctx:       ctx, cancel: cancel,
		notifyCh:    make(chan struct{}, 1),
		finished:    make(chan struct{}),
		sandboxDone: make(chan struct{}),
	}
	pr.conds = append(pr.conds, pod.Status.Conditions...)
	mk := func(c corev1.Container, init bool) *ctrRuntime {
		return &ctrRuntime{spec: c, init: init, logDir: filepath.Join(pr.dir, "logs", c.Name), status: corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: "",
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "PodInitializing"}},
		}}
	}
	for _, c := range pod.Spec.InitContainers {
		pr.inits = append(pr.inits, mk(c, true))
	}
	for _, c := range pod.Spec.Containers {
		cr := mk(c, false)
		if len(pod.Spec.InitContainers) == 0 {
			cr.status.State.Waiting.Reason = "ContainerCreating"
		}
		pr.ctrs = append(pr.ctrs, cr)
	}
	if len(pr.inits) > 0 {
		pr.inits[0].status.State.Waiting.Reason = "PodInitializing"
	}
	return pr
}

func (pr *podRuntime) currentPod() *corev1.Pod {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.pod
}

func (pr *podRuntime) runtimeInfo() PodRuntimeInfo {
	pr.mu.Lock()
	ip := pr.podIP
	pr.mu.Unlock()
	return PodRuntimeInfo{PodIP: ip, HostIP: pr.p.hostIP, NodeName: pr.p.cfg.NodeName, NodeAllocatable: pr.p.allocatable}
}

// notify schedules a status notification (coalesced).
func (pr *podRuntime) notify() {
	select {
	case pr.notifyCh <- struct{}{}:
	default:
	}
}

func (pr *podRuntime) notifier() {
	for {
		select {
		case <-pr.notifyCh:
			pr.mu.Lock()
			silent := pr.terminating && pr.silent
			pr.mu.Unlock()
			if !silent {
				pr.p.notifyPod(pr.snapshot())
			}
		case <-pr.finished:
			return
		}
	}
}

// snapshot returns the pod with its current status.
func (pr *podRuntime) snapshot() *corev1.Pod {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pod := pr.pod.DeepCopy()
	st := pod.Status.DeepCopy()
	st.HostIP = pr.p.hostIP
	st.HostIPs = []corev1.HostIP{{IP: pr.p.hostIP}}
	if pr.podIP != "" {
		st.PodIP = pr.podIP
		st.PodIPs = []corev1.PodIP{{IP: pr.podIP}}
	}
	st.StartTime = &pr.startTime
	st.InitContainerStatuses = nil
	for _, c := range pr.inits {
		st.InitContainerStatuses = append(st.InitContainerStatuses, *c.status.DeepCopy())
	}
	st.ContainerStatuses = nil
	for _, c := range pr.ctrs {
		st.ContainerStatuses = append(st.ContainerStatuses, *c.status.DeepCopy())
	}
	phase := pr.phase
	if phase == "" {
		phase = ComputePhase(&pod.Spec, st.InitContainerStatuses, st.ContainerStatuses)
	}
	st.Phase = phase
	st.Reason, st.Message = pr.reason, pr.message
	// readiness gates' conditions as the API has them; if the informer cannot say, the last
	// known ones (never drop a condition another controller set)
	apiConds := pr.conds
	if len(pod.Spec.ReadinessGates) > 0 && pr.p.podFromAPI != nil {
		if cur, err := pr.p.podFromAPI(pod.Namespace, pod.Name); err == nil && cur.UID == pod.UID {
			apiConds = cur.Status.Conditions
		}
	}
	pr.conds = ComputeConditionsWithGates(pr.conds, &pod.Spec, phase, st.InitContainerStatuses, st.ContainerStatuses, apiConds, metav1.Now())
	st.Conditions = append([]corev1.PodCondition(nil), pr.conds...)
	pod.Status = *st
	return pod
}

func (pr *podRuntime) setWaiting(c *ctrRuntime, reason, msg string) {
	pr.mu.Lock()
	c.status.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
	c.status.Ready = false
	started := false
	c.status.Started = &started
	pr.mu.Unlock()
	pr.notify()
}

func (pr *podRuntime) sleep(d time.Duration) bool {
	select {
	case <-pr.ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// run is the pod worker: sandbox, volumes, init containers, containers.
func (pr *podRuntime) run() {
	go pr.notifier()
	pr.notify()
	// sandbox (terminate waits for this phase to end, so it never races a CNI ADD)
	defer pr.sandboxPhaseOver()
	for attempt := 0; ; attempt++ {
		if err := pr.setupSandbox(); err != nil {
			pr.p.logf("pod %s: sandbox: %v", pr.key, err)
			pr.mu.Lock()
			pr.reason, pr.message = "", ""
			for _, c := range append(append([]*ctrRuntime{}, pr.inits...), pr.ctrs...) {
				if c.status.State.Waiting != nil {
					c.status.State.Waiting.Message = "sandbox: " + err.Error()
				}
			}
			pr.mu.Unlock()
			pr.notify()
			if !pr.sleep(RestartDelay(attempt + 1)) {
				return
			}
			continue
		}
		break
	}
	pr.sandboxPhaseOver()
	pr.notify()
	// volumes
	for attempt := 0; ; attempt++ {
		vols, err := pr.prepareVolumes(pr.ctx)
		if err == nil {
			pr.mu.Lock()
			pr.vols = vols
			pr.mu.Unlock()
			break
		}
		pr.p.logf("pod %s: volumes: %v", pr.key, err)
		pr.mu.Lock()
		for _, c := range append(append([]*ctrRuntime{}, pr.inits...), pr.ctrs...) {
			if c.status.State.Waiting != nil {
				c.status.State.Waiting.Message = "volumes: " + err.Error()
			}
		}
		pr.mu.Unlock()
		pr.notify()
		if !pr.sleep(2 * time.Second) {
			return
		}
	}
	go pr.volumeRefresher()
	// init containers in order
	for _, c := range pr.inits {
		if !pr.runContainer(c) {
			return
		}
		pr.mu.Lock()
		ok := c.status.State.Terminated != nil && c.status.State.Terminated.ExitCode == 0
		pr.mu.Unlock()
		if !ok {
			return
		}
	}
	pr.mu.Lock()
	for _, c := range pr.ctrs {
		if c.status.State.Waiting != nil && c.status.State.Waiting.Reason == "PodInitializing" {
			c.status.State.Waiting.Reason = "ContainerCreating"
		}
	}
	pr.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range pr.ctrs {
		wg.Add(1)
		go func(c *ctrRuntime) { defer wg.Done(); pr.runContainer(c) }(c)
	}
	wg.Wait()
	// all containers are done for good (restartPolicy) unless we are terminating
	pr.mu.Lock()
	terminating := pr.terminating
	pr.mu.Unlock()
	if !terminating {
		pr.p.logf("pod %s: all containers finished; tearing down the sandbox", pr.key)
		pr.teardownSandbox()
		pr.notify()
	}
}

func (pr *podRuntime) volumeRefresher() {
	t := time.NewTicker(pr.p.volumeRefresh)
	defer t.Stop()
	for {
		select {
		case <-pr.ctx.Done():
			return
		case <-t.C:
			pr.refreshVolumes(pr.ctx)
		}
	}
}

func (pr *podRuntime) setupSandbox() error {
	for _, d := range []string{"etc", "logs", "volumes"} {
		if err := os.MkdirAll(filepath.Join(pr.dir, d), 0o755); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(pr.ctx, time.Minute)
	defer cancel()
	ip, err := pr.p.net.setup(ctx, pr.netns, pr.uid)
	if err != nil {
		return err
	}
	pod := pr.currentPod()
	if err := os.WriteFile(filepath.Join(pr.dir, "etc", "hosts"), []byte(RenderHosts(pod, ip, pr.p.cfg.ClusterDomain)), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(pr.dir, "etc", "resolv.conf"), []byte(RenderResolvConf(pod, pr.p.cfg.ClusterDNS, pr.p.cfg.ClusterDomain, readHostResolv())), 0o644); err != nil {
		return err
	}
	pr.mu.Lock()
	pr.podIP = ip
	pr.netUp = true
	pr.mu.Unlock()
	if pod.Spec.ShareProcessNamespace != nil && *pod.Spec.ShareProcessNamespace {
		// As the kubelet's pause container: one PID namespace for the whole pod, whose PID 1
		// (bwrap's init, reaping orphans) is none of the containers.
		args := BwrapArgs(osFS{}, SandboxSpec{Netns: pr.netns, Hostname: PodHostname(pod), Infra: true,
			Argv: []string{"sleep", "infinity"}, StatusFD: 3})
		infra, err := startProcWith(args, os.Environ(), filepath.Join(pr.dir, "logs", "infra.log"), nil, false, false)
		if err != nil {
			return fmt.Errorf("starting the pod's shared PID namespace: %w", err)
		}
		if infra.childPid == 0 {
			infra.stop(0)
			return fmt.Errorf("starting the pod's shared PID namespace: bwrap reported no pid")
		}
		pr.mu.Lock()
		pr.infra = infra
		pr.mu.Unlock()
	}
	pr.p.logf("pod %s: sandbox %s up, IP %s", pr.key, pr.netns, ip)
	return nil
}

func (pr *podRuntime) teardownSandbox() {
	pr.mu.Lock()
	up := pr.netUp
	pr.netUp = false
	infra := pr.infra
	pr.infra = nil
	pr.mu.Unlock()
	if infra != nil {
		infra.stop(0) // SIGKILL: ends whatever still runs in the shared PID namespace
	}
	if !up {
		// still try: a setup may have half-succeeded
		if _, err := os.Stat("/run/netns/" + pr.netns); err != nil {
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pr.p.net.teardown(ctx, pr.netns); err != nil {
		pr.p.logf("pod %s: teardown: %v", pr.key, err)
	}
}

func (pr *podRuntime) stopping() bool {
	select {
	case <-pr.ctx.Done():
		return true
	default:
		return false
	}
}

// runContainer runs one container until it is done for good per restartPolicy (init
// containers: until they succeed), or the pod stops. It returns false if the pod stopped or
// failed for good.
func (pr *podRuntime) runContainer(c *ctrRuntime) bool {
	pod := pr.currentPod()
	policy := pod.Spec.RestartPolicy
	if policy == "" {
		policy = corev1.RestartPolicyAlways
	}
	if c.init && policy == corev1.RestartPolicyAlways {
		policy = corev1.RestartPolicyOnFailure
	}
	for {
		if pr.stopping() {
			return false
		}
		program, ok := LookupImage(pr.p.cfg.Images, c.spec.Image)
		if !ok {
			pr.setWaiting(c, "ErrImagePull", ErrImageNotMapped(c.spec.Image))
			pr.p.event(pr.currentPod(), corev1.EventTypeWarning, "Failed", fmt.Sprintf("Failed to pull image %q: %s", c.spec.Image, ErrImageNotMapped(c.spec.Image)))
			if !pr.sleep(10 * time.Second) {
				return false
			}
			continue
		}
		if msg := ProgramMissing(c.spec.Image, program); msg != "" && len(c.spec.Command) == 0 {
			pr.setWaiting(c, "ErrImagePull", msg)
			pr.p.event(pr.currentPod(), corev1.EventTypeWarning, "Failed", fmt.Sprintf("Failed to pull image %q: %s", c.spec.Image, msg))
			if !pr.sleep(10 * time.Second) {
				return false
			}
			continue
		}
		pod = pr.currentPod()
		env, err := BuildEnv(pod, &c.spec, pr.runtimeInfo(), pr.p.servicesEnv(pod), apiObjects{pr.p})
		if err != nil {
			pr.setWaiting(c, "CreateContainerConfigError", err.Error())
			if !pr.sleep(5 * time.Second) {
				return false
			}
			continue
		}
		argv := ContainerArgv(program, &c.spec, env)
		if len(argv) == 0 {
			pr.setWaiting(c, "CreateContainerConfigError", "empty command")
			if !pr.sleep(10 * time.Second) {
				return false
			}
			continue
		}
		pr.mu.Lock()
		vols := pr.vols
		pr.mu.Unlock()
		mounts, err := containerMounts(&c.spec, vols, apiVolumeNames(pod), env)
		if err != nil {
			pr.setWaiting(c, "CreateContainerConfigError", err.Error())
			if !pr.sleep(5 * time.Second) {
				return false
			}
			continue
		}
		mounts = append(mounts, ProgramMounts(program)...)
		if c.spec.TerminationMessagePath != "" {
			tm := filepath.Join(pr.dir, "termination", c.spec.Name)
			os.MkdirAll(filepath.Dir(tm), 0o755)
			os.WriteFile(tm, nil, 0o666)
			mounts = append(mounts, Mount{Source: tm, Target: c.spec.TerminationMessagePath})
		}
		hostname := PodHostname(pod)
		fullEnv := withDefaults(env, hostname)
		secArgv, runAs := securityArgv(pod, &c.spec, argv)
		if runAs != nil && *runAs != 0 {
			pr.mu.Lock()
			pr.tokenOwner = runAs
			pr.mu.Unlock()
			pr.chownTokens(*runAs)
		}
		var pidNs *os.File
		var nsErr error
		pr.mu.Lock()
		if pr.infra != nil {
			pidNs, nsErr = os.Open(fmt.Sprintf("/proc/%d/ns/pid", pr.infra.childPid))
		}
		pr.mu.Unlock()
		if nsErr != nil {
			pr.setWaiting(c, "CreateContainerError", "the pod's shared PID namespace is gone: "+nsErr.Error())
			if !pr.sleep(5 * time.Second) {
				return false
			}
			continue
		}
		pidNsFD := 0
		if pidNs != nil {
			pidNsFD = 4
		}
		args := BwrapArgs(osFS{}, SandboxSpec{
			Netns: pr.netns, Hostname: hostname,
			HostsFile: filepath.Join(pr.dir, "etc", "hosts"), ResolvFile: filepath.Join(pr.dir, "etc", "resolv.conf"),
			WorkDir: c.spec.WorkingDir, Mounts: mounts, Argv: secArgv, StatusFD: 3, PidNsFD: pidNsFD,
		})
		pr.mu.Lock()
		restarts := c.status.RestartCount
		pr.mu.Unlock()
		cg, cgErr := newCgroup(fmt.Sprintf("%s-%s", pr.netns, c.spec.Name), LimitsFor(&c.spec))
		if cgErr != nil {
			pr.p.logf("pod %s: container %s: cgroup limits not applied: %v", pr.key, c.spec.Name, cgErr)
		}
		args = cg.wrap(args)
		logPath := filepath.Join(c.logDir, fmt.Sprintf("%d.log", restarts))
		os.Remove(logPath)
		pc, err := startProcWith(args, EnvStrings(fullEnv), logPath, pidNs, true, c.spec.Stdin)
		if pidNs != nil {
			pidNs.Close()
		}
		now := metav1.Now()
		if err == nil {
			os.MkdirAll(filepath.Join(pr.dir, "pids"), 0o755)
			os.WriteFile(filepath.Join(pr.dir, "pids", c.spec.Name), []byte(fmt.Sprint(pc.childPid)), 0o644)
		}
		if err != nil {
			pr.mu.Lock()
			c.status.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 128, Reason: "StartError", Message: err.Error(), StartedAt: now, FinishedAt: now}}
			pr.mu.Unlock()
		} else {
			pr.p.logf("pod %s: container %s started (pid %d): %s", pr.key, c.spec.Name, pc.childPid, strings.Join(argv, " "))
			pr.p.event(pod, corev1.EventTypeNormal, "Started", fmt.Sprintf("Started container %s", c.spec.Name))
			ictx, icancel := context.WithCancel(pr.ctx)
			pr.mu.Lock()
			if pr.terminating {
				// terminate() has already collected the processes to stop: stop this one here
				pr.mu.Unlock()
				icancel()
				pc.stop(0)
				cg.remove()
				return false
			}
			c.proc, c.env, c.instanceCancel = pc, fullEnv, icancel
			started := c.spec.StartupProbe == nil
			c.status.Started = &started
			c.status.Ready = c.spec.ReadinessProbe == nil && !c.init && started
			c.status.ContainerID = fmt.Sprintf("localk8s://%s-%s-%d", pr.uid, c.spec.Name, restarts)
			c.status.ImageID = "localk8s://" + program
			c.status.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(pc.started)}}
			pr.mu.Unlock()
			pr.notify()
			if !c.init {
				go pr.probeLoop(ictx, c, pc)
			}
			if c.spec.Lifecycle != nil && c.spec.Lifecycle.PostStart != nil {
				go pr.runHandler(ictx, c, pc, c.spec.Lifecycle.PostStart, 30*time.Second)
			}
			<-pc.done
			icancel()
			msg := ""
			if b, err := os.ReadFile(filepath.Join(pr.dir, "termination", c.spec.Name)); err == nil {
				msg = string(b)
			}
			oom := cg.oomKilled()
			cg.remove()
			pr.mu.Lock()
			reason := ExitReason(pc.exitCode)
			if oom && pc.exitCode != 0 {
				reason = "OOMKilled"
			}
			if c.status.State.Terminated != nil && c.status.State.Terminated.Reason != "" {
				reason = c.status.State.Terminated.Reason
			}
			c.status.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: pc.exitCode, Reason: reason, Message: msg,
				StartedAt: metav1.NewTime(pc.started), FinishedAt: metav1.NewTime(pc.finished),
				ContainerID: c.status.ContainerID,
			}}
			c.status.Ready = false
			f := false
			c.status.Started = &f
			pr.mu.Unlock()
			pr.p.logf("pod %s: container %s exited with %d", pr.key, c.spec.Name, pc.exitCode)
		}
		pr.notify()
		if pr.stopping() {
			return false
		}
		pr.mu.Lock()
		exit := c.status.State.Terminated.ExitCode
		ran := time.Duration(0)
		if pc != nil {
			ran = pc.finished.Sub(pc.started)
		}
		pr.mu.Unlock()
		if c.init && exit == 0 {
			return true
		}
		if !ShouldRestart(policy, exit) {
			if c.init {
				pr.mu.Lock()
				pr.phase = corev1.PodFailed
				pr.mu.Unlock()
				pr.notify()
				pr.teardownSandbox()
			}
			return !c.init
		}
		if ran >= BackoffResetAfter {
			c.chain = 0
		}
		delay := RestartDelay(c.chain)
		c.chain++
		if delay > 0 {
			pr.mu.Lock()
			last := c.status.State.Terminated
			c.status.LastTerminationState = corev1.ContainerState{Terminated: last}
			c.status.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
				Message: fmt.Sprintf("back-off %s restarting failed container=%s pod=%s_%s(%s)", delay, c.spec.Name, pod.Name, pod.Namespace, pr.uid)}}
			pr.mu.Unlock()
			pr.notify()
			pr.p.event(pod, corev1.EventTypeWarning, "BackOff", fmt.Sprintf("Back-off restarting failed container %s in pod %s_%s(%s)", c.spec.Name, pod.Name, pod.Namespace, pr.uid))
			if !pr.sleep(delay) {
				return false
			}
		}
		pr.mu.Lock()
		if c.status.State.Terminated != nil {
			c.status.LastTerminationState = corev1.ContainerState{Terminated: c.status.State.Terminated}
		}
		c.status.RestartCount++
		pr.mu.Unlock()
	}
}

func withDefaults(env []EnvVar, hostname string) []EnvVar {
	has := map[string]bool{}
	for _, e := range env {
		has[e.Name] = true
	}
	out := append([]EnvVar(nil), env...)
	if !has["PATH"] {
		out = append(out, EnvVar{"PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
	}
	if !has["HOME"] {
		out = append(out, EnvVar{"HOME", "/root"})
	}
	if !has["HOSTNAME"] {
		out = append(out, EnvVar{"HOSTNAME", hostname})
	}
	return out
}

// probeLoop runs the startup, liveness and readiness probes of one container instance.
func (pr *podRuntime) probeLoop(ctx context.Context, c *ctrRuntime, pc *proc) {
	var startup, liveness, readiness *ProbeTracker
	if c.spec.StartupProbe != nil {
		startup = NewProbeTracker(StartupProbe, c.spec.StartupProbe)
	}
	if c.spec.LivenessProbe != nil {
		liveness = NewProbeTracker(LivenessProbe, c.spec.LivenessProbe)
	}
	if c.spec.ReadinessProbe != nil {
		readiness = NewProbeTracker(ReadinessProbe, c.spec.ReadinessProbe)
	}
	if startup == nil && liveness == nil && readiness == nil {
		return
	}
	started := pc.started
	isStarted := startup == nil
	for {
		now := time.Now()
		next := now.Add(time.Hour)
		type item struct {
			t *ProbeTracker
			p *corev1.Probe
		}
		var items []item
		if !isStarted {
			items = append(items, item{startup, c.spec.StartupProbe})
		} else {
			if liveness != nil {
				items = append(items, item{liveness, c.spec.LivenessProbe})
			}
			if readiness != nil {
				items = append(items, item{readiness, c.spec.ReadinessProbe})
			}
		}
		for _, it := range items {
			if it.t.Due(now, started) {
				ok, out := pr.probe(ctx, c, pc, it.p, it.t.Timeout)
				if ctx.Err() != nil {
					return
				}
				changed := it.t.Record(time.Now(), ok)
				if !ok && (changed || it.t.Failed() || it.t.Kind != ReadinessProbe) {
					pr.p.logf("pod %s: container %s: %s probe failed: %s", pr.key, c.spec.Name, probeName(it.t.Kind), out)
					pr.p.event(pr.currentPod(), corev1.EventTypeWarning, "Unhealthy", fmt.Sprintf("%s probe failed: %s", strings.Title(probeName(it.t.Kind)), out))
				}
				switch it.t.Kind {
				case StartupProbe:
					if it.t.Result {
						isStarted = true
						started = time.Now() // liveness/readiness delays count from here
						pr.mu.Lock()
						t := true
						c.status.Started = &t
						c.status.Ready = readiness == nil
						pr.mu.Unlock()
						pr.notify()
					} else if it.t.Failed() {
						pr.killForProbe(c, pc, it.p, "startup")
						return
					}
				case LivenessProbe:
					if it.t.Failed() {
						pr.killForProbe(c, pc, it.p, "liveness")
						return
					}
				case ReadinessProbe:
					pr.mu.Lock()
					changed := c.status.Ready != it.t.Result
					c.status.Ready = it.t.Result
					pr.mu.Unlock()
					if changed {
						pr.notify()
					}
				}
			}
			if n := it.t.NextDue(started); n.Before(next) {
				next = n
			}
		}
		if !isStarted && len(items) == 0 {
			return
		}
		d := time.Until(next)
		if d < 10*time.Millisecond {
			d = 10 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

func probeName(k ProbeKind) string {
	return [...]string{"startup", "liveness", "readiness"}[k]
}

func (pr *podRuntime) killForProbe(c *ctrRuntime, pc *proc, p *corev1.Probe, kind string) {
	pod := pr.currentPod()
	grace := int64(30)
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	if p.TerminationGracePeriodSeconds != nil {
		grace = *p.TerminationGracePeriodSeconds
	}
	pr.p.logf("pod %s: container %s failed %s probe, will be restarted", pr.key, c.spec.Name, kind)
	pr.p.event(pod, corev1.EventTypeNormal, "Killing", fmt.Sprintf("Container %s failed %s probe, will be restarted", c.spec.Name, kind))
	if c.spec.Lifecycle != nil && c.spec.Lifecycle.PreStop != nil {
		pr.runHandler(context.Background(), c, pc, c.spec.Lifecycle.PreStop, time.Duration(grace)*time.Second)
	}
	pc.stop(time.Duration(grace) * time.Second)
}

// probe runs one probe action.
func (pr *podRuntime) probe(ctx context.Context, c *ctrRuntime, pc *proc, p *corev1.Probe, timeout time.Duration) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pr.mu.Lock()
	ip := pr.podIP
	pr.mu.Unlock()
	switch {
	case p.HTTPGet != nil:
		return pr.httpAction(ctx, c, ip, p.HTTPGet)
	case p.TCPSocket != nil:
		port, err := resolvePort(p.TCPSocket.Port, &c.spec)
		if err != nil {
			return false, err.Error()
		}
		host := p.TCPSocket.Host
		if host == "" {
			host = ip
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return false, err.Error()
		}
		conn.Close()
		return true, ""
	case p.Exec != nil:
		out, code, err := pr.execCapture(ctx, c, pc, p.Exec.Command)
		if err != nil {
			return false, err.Error()
		}
		return code == 0, fmt.Sprintf("exit %d: %s", code, out)
	case p.GRPC != nil:
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(int(p.GRPC.Port))))
		if err != nil {
			return false, err.Error()
		}
		conn.Close()
		return true, ""
	}
	return false, "probe has no action"
}

func (pr *podRuntime) httpAction(ctx context.Context, c *ctrRuntime, ip string, h *corev1.HTTPGetAction) (bool, string) {
	port, err := resolvePort(h.Port, &c.spec)
	if err != nil {
		return false, err.Error()
	}
	host := h.Host
	if host == "" {
		host = ip
	}
	scheme := strings.ToLower(string(h.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	path := h.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	url := fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), path)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err.Error()
	}
	req.Header.Set("User-Agent", "kube-probe/1.34")
	for _, hd := range h.HTTPHeaders {
		if strings.EqualFold(hd.Name, "host") {
			req.Host = hd.Value
		} else {
			req.Header.Add(hd.Name, hd.Value)
		}
	}
	resp, err := pr.p.probeClient.Do(req)
	if err != nil {
		return false, err.Error()
	}
	resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 400 {
		return true, ""
	}
	return false, fmt.Sprintf("HTTP probe failed with statuscode: %d", resp.StatusCode)
}

func resolvePort(p intstr.IntOrString, c *corev1.Container) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("port %q not found in container %s", p.StrVal, c.Name)
}

// execCapture runs argv inside the container's namespaces and returns output and exit code.
func (pr *podRuntime) execCapture(ctx context.Context, c *ctrRuntime, pc *proc, argv []string) (string, int, error) {
	if pc == nil || pc.childPid == 0 || pc.exited() {
		return "", -1, fmt.Errorf("container %s is not running", c.spec.Name)
	}
	uid, gid := runAsIDs(pr.currentPod(), &c.spec)
	args := nsenterArgs(pc.childPid, uid, gid, argv)
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	pr.mu.Lock()
	cmd.Env = EnvStrings(c.env)
	pr.mu.Unlock()
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ExitCodeOf(ee), nil
		}
		return string(out), -1, err
	}
	return string(out), 0, nil
}

// runHandler runs a lifecycle handler (exec / httpGet / sleep) with a time budget.
func (pr *podRuntime) runHandler(ctx context.Context, c *ctrRuntime, pc *proc, h *corev1.LifecycleHandler, budget time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	pr.mu.Lock()
	ip := pr.podIP
	pr.mu.Unlock()
	switch {
	case h.Exec != nil:
		out, code, err := pr.execCapture(ctx, c, pc, h.Exec.Command)
		if err != nil || code != 0 {
			pr.p.logf("pod %s: container %s: hook exec: code %d err %v: %s", pr.key, c.spec.Name, code, err, out)
		}
	case h.HTTPGet != nil:
		ok, out := pr.httpAction(ctx, c, ip, h.HTTPGet)
		if !ok {
			pr.p.logf("pod %s: container %s: hook httpGet: %s", pr.key, c.spec.Name, out)
		}
	case h.Sleep != nil:
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(h.Sleep.Seconds) * time.Second):
		}
	}
}

// terminate stops the pod: preStop, SIGTERM, grace, SIGKILL, CNI DEL, netns delete.
// It returns when the pod is fully stopped.
func (pr *podRuntime) terminate(grace time.Duration, report bool) {
	pr.mu.Lock()
	if pr.terminating {
		pr.mu.Unlock()
		<-pr.finished
		return
	}
	pr.terminating = true
	pr.silent = !report
	all := append(append([]*ctrRuntime{}, pr.inits...), pr.ctrs...)
	pr.mu.Unlock()
	deadline := time.Now().Add(grace)
	pr.cancel() // no more restarts or probes
	var wg sync.WaitGroup
	for _, c := range all {
		pr.mu.Lock()
		pc := c.proc
		pr.mu.Unlock()
		if pc == nil || pc.exited() {
			continue
		}
		wg.Add(1)
		pr.p.event(pr.currentPod(), corev1.EventTypeNormal, "Killing", fmt.Sprintf("Stopping container %s", c.spec.Name))
		go func(c *ctrRuntime, pc *proc) {
			defer wg.Done()
			if c.spec.Lifecycle != nil && c.spec.Lifecycle.PreStop != nil {
				pr.runHandler(context.Background(), c, pc, c.spec.Lifecycle.PreStop, time.Until(deadline))
			}
			pc.stop(time.Until(deadline))
		}(c, pc)
	}
	wg.Wait()
	now := metav1.Now()
	pr.mu.Lock()
	for _, c := range all {
		switch {
		case c.proc != nil && c.status.State.Running != nil:
			// the run loop may not have recorded the exit yet
			c.status.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: c.proc.exitCode, Reason: ExitReason(c.proc.exitCode),
				StartedAt: metav1.NewTime(c.proc.started), FinishedAt: metav1.NewTime(c.proc.finished), ContainerID: c.status.ContainerID}}
		case c.status.State.Terminated == nil:
			if c.status.LastTerminationState.Terminated != nil {
				c.status.State = corev1.ContainerState{Terminated: c.status.LastTerminationState.Terminated}
			} else if c.init {
				c.status.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "ContainerStatusUnknown", Message: "The container could not be located when the pod was terminated", StartedAt: now, FinishedAt: now}}
			} else {
				c.status.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "ContainerStatusUnknown", Message: "The container could not be located when the pod was deleted.  The container used to be Running", FinishedAt: now}}
			}
		}
		c.status.Ready = false
		f := false
		c.status.Started = &f
	}
	var sts []corev1.ContainerStatus
	for _, c := range pr.ctrs {
		sts = append(sts, c.status)
	}
	if pr.phase == "" {
		pr.phase = TerminalPhase(sts)
	}
	pr.mu.Unlock()
	select {
	case <-pr.sandboxDone:
	case <-time.After(90 * time.Second):
	}
	pr.teardownSandbox()
	if report {
		pr.p.notifyPod(pr.snapshot())
	}
}
