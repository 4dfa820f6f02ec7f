package agent

import (
	"time"

	corev1 "k8s.io/api/core/v1"
)

// ProbeKind is startup, liveness or readiness.
type ProbeKind int

const (
	StartupProbe ProbeKind = iota
	LivenessProbe
	ReadinessProbe
)

// ProbeTracker is the pure state machine of one probe of one container instance: when it is
// due and what its result is after thresholds. Create a new one for each container start.
type ProbeTracker struct {
	Kind    ProbeKind
	Initial time.Duration
	Period  time.Duration
	Timeout time.Duration
	SuccTh  int
	FailTh  int

	Result  bool // current result after thresholds
	succ    int
	fail    int
	lastRun time.Time
	everRun bool
}

// NewProbeTracker applies the API defaults (period 10s, timeout 1s, success 1, failure 3).
// A liveness probe starts as succeeded, readiness and startup as failed.
func NewProbeTracker(kind ProbeKind, p *corev1.Probe) *ProbeTracker {
	t := &ProbeTracker{Kind: kind, Period: 10 * time.Second, Timeout: time.Second, SuccTh: 1, FailTh: 3}
	t.Initial = time.Duration(p.InitialDelaySeconds) * time.Second
	if p.PeriodSeconds > 0 {
		t.Period = time.Duration(p.PeriodSeconds) * time.Second
	}
	if p.TimeoutSeconds > 0 {
		t.Timeout = time.Duration(p.TimeoutSeconds) * time.Second
	}
	if p.SuccessThreshold > 0 {
		t.SuccTh = int(p.SuccessThreshold)
	}
	if p.FailureThreshold > 0 {
		t.FailTh = int(p.FailureThreshold)
	}
	t.Result = kind == LivenessProbe
	return t
}

// Due tells whether the probe should run at now for a container started at started.
func (t *ProbeTracker) Due(now, started time.Time) bool {
	if now.Before(started.Add(t.Initial)) {
		return false
	}
	return !t.everRun || now.Sub(t.lastRun) >= t.Period
}

// NextDue is the earliest time the probe is due.
func (t *ProbeTracker) NextDue(started time.Time) time.Time {
	first := started.Add(t.Initial)
	if !t.everRun {
		return first
	}
	n := t.lastRun.Add(t.Period)
	if n.Before(first) {
		return first
	}
	return n
}

// Record feeds one probe outcome and reports whether Result changed.
func (t *ProbeTracker) Record(now time.Time, ok bool) bool {
	t.lastRun, t.everRun = now, true
	old := t.Result
	if ok {
		t.succ++
		t.fail = 0
		if t.succ >= t.SuccTh {
			t.Result = true
		}
	} else {
		t.fail++
		t.succ = 0
		if t.fail >= t.FailTh {
			t.Result = false
		}
	}
	return old != t.Result
}

// Failed tells whether the probe has reached its failure threshold (for liveness and
// startup probes: the container must be restarted).
func (t *ProbeTracker) Failed() bool { return t.fail >= t.FailTh }

// RestartDelay is the kubelet's crash back-off before restart number n of a chain of
// consecutive failures (n counts restarts already done in the chain): the first restart is
// immediate, then 10 s, doubling, capped at 5 minutes.
func RestartDelay(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	d := 10 * time.Second
	for i := 1; i < n; i++ {
		d *= 2
		if d >= 5*time.Minute {
			return 5 * time.Minute
		}
	}
	return d
}

// BackoffResetAfter: a container that ran this long resets its back-off chain.
const BackoffResetAfter = 10 * time.Minute

// ShouldRestart applies restartPolicy to a container that exited with exitCode.
func ShouldRestart(policy corev1.RestartPolicy, exitCode int32) bool {
	switch policy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return exitCode != 0
	default:
		return true
	}
}
