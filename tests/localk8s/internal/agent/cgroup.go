package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// cgroupRoot is where cgroup v1 hierarchies are mounted.
var cgroupRoot = "/sys/fs/cgroup"

// CgroupLimits are the cgroup v1 values for a container's resource limits (0 = unlimited).
type CgroupLimits struct {
	MemoryBytes int64
	CPUQuotaUs  int64 // per 100000 us period
}

// LimitsFor derives cgroup limits from a container's resources.limits.
func LimitsFor(c *corev1.Container) CgroupLimits {
	var l CgroupLimits
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		l.MemoryBytes = q.Value()
	}
	if q, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		l.CPUQuotaUs = q.MilliValue() * 100
		if l.CPUQuotaUs < 1000 {
			l.CPUQuotaUs = 1000
		}
	}
	return l
}

// cgroup is one container instance's cgroup directories.
type cgroup struct {
	dirs []string
}

// newCgroup creates localk8s/<name> in the memory and cpu hierarchies with the limits set.
// It returns nil (no cgroup) when there are no limits or cgroup v1 is not writable.
func newCgroup(name string, l CgroupLimits) (*cgroup, error) {
	if l.MemoryBytes == 0 && l.CPUQuotaUs == 0 {
		return nil, nil
	}
	cg := &cgroup{}
	if l.MemoryBytes > 0 {
		d := filepath.Join(cgroupRoot, "memory", "localk8s", name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		cg.dirs = append(cg.dirs, d)
		if err := os.WriteFile(filepath.Join(d, "memory.limit_in_bytes"), []byte(strconv.FormatInt(l.MemoryBytes, 10)), 0o644); err != nil {
			cg.remove()
			return nil, err
		}
	}
	if l.CPUQuotaUs > 0 {
		d := filepath.Join(cgroupRoot, "cpu", "localk8s", name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			cg.remove()
			return nil, err
		}
		cg.dirs = append(cg.dirs, d)
		os.WriteFile(filepath.Join(d, "cpu.cfs_period_us"), []byte("100000"), 0o644)
		if err := os.WriteFile(filepath.Join(d, "cpu.cfs_quota_us"), []byte(strconv.FormatInt(l.CPUQuotaUs, 10)), 0o644); err != nil {
			cg.remove()
			return nil, err
		}
	}
	return cg, nil
}

// wrap prefixes args so the process joins the cgroups before exec'ing.
func (cg *cgroup) wrap(args []string) []string {
	if cg == nil || len(cg.dirs) == 0 {
		return args
	}
	var script strings.Builder
	for _, d := range cg.dirs {
		fmt.Fprintf(&script, "echo $$ > %s/cgroup.procs || exit 126; ", d)
	}
	script.WriteString(`exec "$@"`)
	return append([]string{"sh", "-c", script.String(), "sh"}, args...)
}

// oomKilled tells whether the memory cgroup's OOM killer fired.
func (cg *cgroup) oomKilled() bool {
	if cg == nil {
		return false
	}
	for _, d := range cg.dirs {
		b, err := os.ReadFile(filepath.Join(d, "memory.oom_control"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && f[0] == "oom_kill" && f[1] != "0" {
				return true
			}
		}
	}
	return false
}

func (cg *cgroup) remove() {
	if cg == nil {
		return
	}
	for _, d := range cg.dirs {
		os.Remove(d)
	}
}

// securityArgv prefixes argv with setpriv for securityContext.runAsUser/runAsGroup (the
// pod's, overridden by the container's).
func securityArgv(pod *corev1.Pod, c *corev1.Container, argv []string) ([]string, *int64) {
	uid, gid := runAsIDs(pod, c)
	if uid == nil && gid == nil {
		return argv, nil
	}
	pre := []string{"setpriv"}
	if uid != nil {
		pre = append(pre, "--reuid", strconv.FormatInt(*uid, 10))
	}
	if gid != nil {
		pre = append(pre, "--regid", strconv.FormatInt(*gid, 10))
	}
	pre = append(pre, "--clear-groups")
	if psc := pod.Spec.SecurityContext; psc != nil && psc.FSGroup != nil {
		pre[len(pre)-1] = "--groups=" + strconv.FormatInt(*psc.FSGroup, 10)
	}
	pre = append(pre, "--")
	return append(pre, argv...), uid
}

// runAsIDs is the effective runAsUser/runAsGroup (an unset group stays root, as with an image
// without a USER group).
func runAsIDs(pod *corev1.Pod, c *corev1.Container) (*int64, *int64) {
	var uid, gid *int64
	if psc := pod.Spec.SecurityContext; psc != nil {
		uid, gid = psc.RunAsUser, psc.RunAsGroup
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = sc.RunAsGroup
		}
	}
	return uid, gid
}
