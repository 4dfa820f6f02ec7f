package agent

import (
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ComputePhase derives the pod phase from container statuses like the kubelet's getPhase.
func ComputePhase(spec *corev1.PodSpec, inits, ctrs []corev1.ContainerStatus) corev1.PodPhase {
	policy := spec.RestartPolicy
	if policy == "" {
		policy = corev1.RestartPolicyAlways
	}
	initialized, failedInit, pendingInit := 0, 0, 0
	for _, s := range inits {
		switch {
		case s.State.Terminated != nil && s.State.Terminated.ExitCode == 0:
			initialized++
		case s.State.Terminated != nil:
			failedInit++
		case s.State.Waiting != nil && s.LastTerminationState.Terminated != nil && s.LastTerminationState.Terminated.ExitCode != 0:
			failedInit++
		default:
			pendingInit++
		}
	}
	if failedInit > 0 && policy == corev1.RestartPolicyNever {
		return corev1.PodFailed
	}
	if initialized < len(spec.InitContainers) {
		return corev1.PodPending
	}
	running, waiting, stopped, succeeded := 0, 0, 0, 0
	for _, s := range ctrs {
		switch {
		case s.State.Running != nil:
			running++
		case s.State.Terminated != nil:
			stopped++
			if s.State.Terminated.ExitCode == 0 {
				succeeded++
			}
		case s.State.Waiting != nil:
			if s.LastTerminationState.Terminated != nil {
				stopped++
			} else {
				waiting++
			}
		default:
			waiting++
		}
	}
	if len(ctrs) < len(spec.Containers) {
		waiting += len(spec.Containers) - len(ctrs)
	}
	switch {
	case waiting > 0:
		return corev1.PodPending
	case running > 0:
		return corev1.PodRunning
	case stopped > 0:
		if policy == corev1.RestartPolicyAlways {
			return corev1.PodRunning
		}
		if stopped == succeeded {
			return corev1.PodSucceeded
		}
		if policy == corev1.RestartPolicyNever {
			return corev1.PodFailed
		}
		return corev1.PodRunning
	}
	return corev1.PodPending
}

// TerminalPhase is the phase of a pod whose containers have all been stopped for deletion.
func TerminalPhase(ctrs []corev1.ContainerStatus) corev1.PodPhase {
	for _, s := range ctrs {
		if s.State.Terminated == nil || s.State.Terminated.ExitCode != 0 {
			return corev1.PodFailed
		}
	}
	return corev1.PodSucceeded
}

// SetCondition sets a condition, keeping its transition time when the status is unchanged.
func SetCondition(conds []corev1.PodCondition, c corev1.PodCondition, now metav1.Time) []corev1.PodCondition {
	for i := range conds {
		if conds[i].Type == c.Type {
			if conds[i].Status == c.Status && !conds[i].LastTransitionTime.IsZero() {
				c.LastTransitionTime = conds[i].LastTransitionTime
			} else {
				c.LastTransitionTime = now
			}
			conds[i] = c
			return conds
		}
	}
	c.LastTransitionTime = now
	return append(conds, c)
}

// ComputeConditions updates PodScheduled, Initialized, ContainersReady and Ready.
func ComputeConditions(prev []corev1.PodCondition, spec *corev1.PodSpec, phase corev1.PodPhase, inits, ctrs []corev1.ContainerStatus, now metav1.Time) []corev1.PodCondition {
	return ComputeConditionsWithGates(prev, spec, phase, inits, ctrs, nil, now)
}

// ComputeConditionsWithGates is ComputeConditions for a pod with spec.readinessGates: apiConds
// are the conditions of the pod object in the API (where other controllers set the gates'
// conditions). Each gate's condition is carried over as it is there (the agent writes the whole
// status, so it must not drop them), and Ready is True only if the containers are ready and
// every gate's condition is True, with the kubelet's reason and messages otherwise.
func ComputeConditionsWithGates(prev []corev1.PodCondition, spec *corev1.PodSpec, phase corev1.PodPhase, inits, ctrs []corev1.ContainerStatus, apiConds []corev1.PodCondition, now metav1.Time) []corev1.PodCondition {
	conds := append([]corev1.PodCondition(nil), prev...)
	var gateMsgs []string
	for _, g := range spec.ReadinessGates {
		var found *corev1.PodCondition
		for i := range apiConds {
			if apiConds[i].Type == g.ConditionType {
				found = &apiConds[i]
			}
		}
		if found == nil {
			gateMsgs = append(gateMsgs, fmt.Sprintf("corresponding condition of pod readiness gate %q does not exist.", string(g.ConditionType)))
			// gone from the API object: do not write back an old copy
			conds = slices.DeleteFunc(conds, func(c corev1.PodCondition) bool { return c.Type == g.ConditionType })
			continue
		}
		replaced := false
		for i := range conds {
			if conds[i].Type == found.Type {
				conds[i], replaced = *found, true
			}
		}
		if !replaced {
			conds = append(conds, *found)
		}
		if found.Status != corev1.ConditionTrue {
			gateMsgs = append(gateMsgs, fmt.Sprintf("the status of pod readiness gate %q is not \"True\", but %v", string(g.ConditionType), found.Status))
		}
	}
	conds = SetCondition(conds, corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}, now)

	var notInit []string
	for i, c := range spec.InitContainers {
		if i >= len(inits) || inits[i].State.Terminated == nil || inits[i].State.Terminated.ExitCode != 0 {
			notInit = append(notInit, c.Name)
		}
	}
	initC := corev1.PodCondition{Type: corev1.PodInitialized, Status: corev1.ConditionTrue}
	if len(notInit) > 0 {
		initC.Status, initC.Reason = corev1.ConditionFalse, "ContainersNotInitialized"
		initC.Message = fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(notInit, " "))
	}
	conds = SetCondition(conds, initC, now)

	var unready []string
	for i, c := range spec.Containers {
		if i >= len(ctrs) || !ctrs[i].Ready {
			unready = append(unready, c.Name)
		}
	}
	cr := corev1.PodCondition{Type: corev1.ContainersReady, Status: corev1.ConditionTrue}
	rd := corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue}
	if phase == corev1.PodSucceeded || phase == corev1.PodFailed {
		cr.Status, cr.Reason = corev1.ConditionFalse, "PodCompleted"
		rd.Status, rd.Reason = corev1.ConditionFalse, "PodCompleted"
	} else if len(unready) > 0 {
		msg := fmt.Sprintf("containers with unready status: [%s]", strings.Join(unready, " "))
		cr.Status, cr.Reason, cr.Message = corev1.ConditionFalse, "ContainersNotReady", msg
		rd.Status, rd.Reason, rd.Message = corev1.ConditionFalse, "ContainersNotReady", msg
	} else if len(gateMsgs) > 0 {
		rd.Status, rd.Reason, rd.Message = corev1.ConditionFalse, "ReadinessGatesNotReady", strings.Join(gateMsgs, ", ")
	}
	conds = SetCondition(conds, cr, now)
	conds = SetCondition(conds, rd, now)
	order := map[corev1.PodConditionType]int{corev1.PodScheduled: 0, corev1.PodInitialized: 1, corev1.ContainersReady: 2, corev1.PodReady: 3}
	sort.SliceStable(conds, func(i, j int) bool {
		oi, ok1 := order[conds[i].Type]
		oj, ok2 := order[conds[j].Type]
		if !ok1 {
			oi = 10
		}
		if !ok2 {
			oj = 10
		}
		return oi < oj
	})
	return conds
}

// ExitReason is the terminated reason the kubelet reports for an exit code.
func ExitReason(exitCode int32) string {
	if exitCode == 0 {
		return "Completed"
	}
	return "Error"
}

// ExitCodeOf is a finished process's exit code as a container runtime reports it: the status
// it exited with, or 128 + the signal that killed it (Go's ExitCode() says -1 for those).
func ExitCodeOf(ee *exec.ExitError) int {
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ee.ExitCode()
}
