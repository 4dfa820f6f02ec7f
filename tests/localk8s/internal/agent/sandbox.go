package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// NetnsPrefixOf is the prefix of every network namespace of a node: cfg.NetnsPrefix or
// "kvc-<node>-".
func NetnsPrefixOf(cfg Config) string {
	if cfg.NetnsPrefix != "" {
		return cfg.NetnsPrefix
	}
	return "kvc-" + cfg.NodeName + "-"
}

// NetnsName is the network namespace name of a pod: the prefix and the UID's first 12 hex digits.
func NetnsName(prefix, uid string) string {
	u := strings.ReplaceAll(uid, "-", "")
	if len(u) > 12 {
		u = u[:12]
	}
	return prefix + u
}

// sandboxRecord is persisted per netns so a later agent (or Cleanup) can undo the CNI ADD.
type sandboxRecord struct {
	Netns       string `json:"netns"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	ConfPath    string `json:"confPath"`
	BinDir      string `json:"binDir"`
}

type network struct {
	binDir   string
	confPath string
	cacheDir string
	recDir   string
}

func (n *network) cni() (*libcni.CNIConfig, *libcni.NetworkConfigList, error) {
	list, err := libcni.NetworkConfFromFile(n.confPath)
	if err != nil {
		return nil, nil, fmt.Errorf("CNI conflist %s: %w", n.confPath, err)
	}
	return libcni.NewCNIConfigWithCacheDir([]string{n.binDir}, n.cacheDir, nil), list, nil
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// setup creates the netns and runs CNI ADD; it returns the pod IP.
func (n *network) setup(ctx context.Context, netns, containerID string) (string, error) {
	_ = os.MkdirAll(n.recDir, 0o755)
	if _, err := os.Stat("/run/netns/" + netns); err == nil {
		n.teardown(ctx, netns)
	}
	if err := run(ctx, "ip", "netns", "add", netns); err != nil {
		return "", err
	}
	rec := sandboxRecord{Netns: netns, ContainerID: containerID, IfName: "eth0", ConfPath: n.confPath, BinDir: n.binDir}
	b, _ := json.Marshal(rec)
	if err := os.WriteFile(filepath.Join(n.recDir, netns+".json"), b, 0o644); err != nil {
		return "", err
	}
	if err := run(ctx, "ip", "-n", netns, "link", "set", "lo", "up"); err != nil {
		return "", err
	}
	cni, list, err := n.cni()
	if err != nil {
		return "", err
	}
	res, err := cni.AddNetworkList(ctx, list, &libcni.RuntimeConf{ContainerID: containerID, NetNS: "/run/netns/" + netns, IfName: "eth0"})
	if err != nil {
		return "", fmt.Errorf("CNI ADD: %w", err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return "", fmt.Errorf("CNI result: %w", err)
	}
	for _, ip := range r.IPs {
		if ip.Address.IP.To4() != nil {
			return ip.Address.IP.String(), nil
		}
	}
	if len(r.IPs) > 0 {
		return r.IPs[0].Address.IP.String(), nil
	}
	return "", fmt.Errorf("CNI ADD returned no IP")
}

// teardown runs CNI DEL and deletes the netns (best effort, idempotent).
func (n *network) teardown(ctx context.Context, netns string) error {
	recPath := filepath.Join(n.recDir, netns+".json")
	var firstErr error
	if b, err := os.ReadFile(recPath); err == nil {
		var rec sandboxRecord
		if json.Unmarshal(b, &rec) == nil {
			nn := &network{binDir: rec.BinDir, confPath: rec.ConfPath, cacheDir: n.cacheDir}
			if cni, list, err := nn.cni(); err == nil {
				if err := cni.DelNetworkList(ctx, list, &libcni.RuntimeConf{ContainerID: rec.ContainerID, NetNS: "/run/netns/" + netns, IfName: rec.IfName}); err != nil {
					firstErr = fmt.Errorf("CNI DEL: %w", err)
				}
			}
		}
	}
	if _, err := os.Stat("/run/netns/" + netns); err == nil {
		if err := run(ctx, "ip", "netns", "delete", netns); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr == nil {
		os.Remove(recPath)
	}
	return firstErr
}

// leftovers lists the netns of a node that a previous run left (from records and /run/netns).
func (n *network) leftovers(prefix string) []string {
	seen := map[string]bool{}
	if ents, err := os.ReadDir(n.recDir); err == nil {
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".json") && strings.HasPrefix(e.Name(), prefix) {
				seen[strings.TrimSuffix(e.Name(), ".json")] = true
			}
		}
	}
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), prefix) {
				seen[e.Name()] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Mount is one bind mount into the sandbox.
type Mount struct {
	Source   string
	Target   string
	ReadOnly bool
}

// SandboxSpec is everything the bwrap command line is built from.
type SandboxSpec struct {
	Netns      string
	Hostname   string
	HostsFile  string
	ResolvFile string
	WorkDir    string
	Mounts     []Mount
	Argv       []string
	// StatusFD is the fd number (in the child) for bwrap's --json-status-fd; 0 = none.
	StatusFD int
	// PidNsFD, when > 0, is the fd number (in the child) of the pod's shared PID namespace
	// (/proc/<infra>/ns/pid, shareProcessNamespace): the container joins it instead of getting
	// one of its own, so it is not PID 1 and sees, and can signal, the other containers'
	// processes (bwrap --pidns; its /proc is that namespace's).
	PidNsFD int
	// Infra makes this the pod's infra process of a shared PID namespace: bwrap's own init
	// (which reaps orphans) is PID 1 and Argv runs under it.
	Infra bool
}

// hostFS abstracts the host file system lookups of BwrapArgs (for tests).
type hostFS interface {
	Lstat(p string) (os.FileInfo, error)
	Readlink(p string) (string, error)
	ReadDir(p string) ([]os.DirEntry, error)
}

type osFS struct{}

func (osFS) Lstat(p string) (os.FileInfo, error)     { return os.Lstat(p) }
func (osFS) Readlink(p string) (string, error)       { return os.Readlink(p) }
func (osFS) ReadDir(p string) ([]os.DirEntry, error) { return os.ReadDir(p) }

// resolveHost resolves symlinks along p on the host as far as p exists; it returns the
// resolved path and whether it exists.
func resolveHost(fs hostFS, p string) (string, bool) {
	comps := strings.Split(strings.Trim(filepath.Clean(p), "/"), "/")
	cur := "/"
	for i := 0; i < len(comps); i++ {
		c := comps[i]
		if c == "" {
			continue
		}
		next := filepath.Join(cur, c)
		fi, err := fs.Lstat(next)
		if err != nil {
			return filepath.Join(append([]string{cur}, comps[i:]...)...), false
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			t, err := fs.Readlink(next)
			if err != nil {
				return filepath.Join(append([]string{cur}, comps[i:]...)...), false
			}
			if !filepath.IsAbs(t) {
				t = filepath.Join(cur, t)
			}
			rest := append([]string{t}, comps[i+1:]...)
			return resolveHost(fs, filepath.Join(rest...))
		}
		cur = next
	}
	return cur, true
}

var sandboxSpecialDirs = map[string]bool{"/tmp": true, "/dev": true, "/proc": true}

// BwrapArgs builds `ip netns exec NS bwrap ... -- argv`. The host root is bound read-only; where
// a mount target does not exist on the host, its ancestors are rebuilt on a tmpfs with each
// host entry bound read-only, so bwrap can create the mount point without writing the host.
func BwrapArgs(fs hostFS, s SandboxSpec) []string {
	args := []string{}
	if s.Netns != "" {
		args = append(args, "ip", "netns", "exec", s.Netns)
	}
	switch {
	case s.PidNsFD > 0:
		args = append(args, "bwrap", "--die-with-parent", "--pidns", fmt.Sprint(s.PidNsFD), "--unshare-uts", "--unshare-ipc")
	case s.Infra:
		args = append(args, "bwrap", "--die-with-parent", "--unshare-pid", "--unshare-uts", "--unshare-ipc")
	default:
		args = append(args, "bwrap", "--die-with-parent", "--unshare-pid", "--unshare-uts", "--unshare-ipc", "--as-pid-1")
	}
	args = append(args, "--hostname", s.Hostname)
	if s.StatusFD > 0 {
		args = append(args, "--json-status-fd", fmt.Sprint(s.StatusFD))
	}
	mounts := make([]Mount, 0, len(s.Mounts))
	expand := map[string]bool{}
	for _, m := range s.Mounts {
		t, exists := resolveHost(fs, m.Target)
		m.Target = t
		mounts = append(mounts, m)
		if exists {
			continue
		}
		var chain []string
		special := false
		for a := filepath.Dir(t); ; a = filepath.Dir(a) {
			if sandboxSpecialDirs[a] {
				special = true
			}
			chain = append(chain, a)
			if a == "/" {
				break
			}
		}
		if special {
			continue
		}
		for _, a := range chain {
			if _, err := fs.Lstat(a); err == nil {
				expand[a] = true
			}
		}
	}
	if len(expand) == 0 {
		args = append(args, "--ro-bind", "/", "/")
	} else {
		dirs := make([]string, 0, len(expand))
		for d := range expand {
			dirs = append(dirs, d)
		}
		sort.Slice(dirs, func(i, j int) bool {
			return depth(dirs[i]) < depth(dirs[j]) || (depth(dirs[i]) == depth(dirs[j]) && dirs[i] < dirs[j])
		})
		for _, d := range dirs {
			if d != "/" {
				args = append(args, "--dir", d)
			}
			ents, _ := fs.ReadDir(d)
			for _, e := range ents {
				p := filepath.Join(d, e.Name())
				if expand[p] || (d == "/" && (sandboxSpecialDirs[p] || p == "/sys")) {
					continue
				}
				if e.Type()&os.ModeSymlink != 0 {
					if t, err := fs.Readlink(p); err == nil {
						args = append(args, "--symlink", t, p)
					}
					continue
				}
				args = append(args, "--ro-bind-try", p, p)
			}
		}
		args = append(args, "--ro-bind", "/sys", "/sys")
	}
	// the host's devpts, so a pty allocated for `kubectl exec -t` is a named tty inside
	args = append(args, "--dev", "/dev", "--dev-bind", "/dev/pts", "/dev/pts", "--proc", "/proc", "--tmpfs", "/tmp")
	if s.HostsFile != "" {
		args = append(args, "--ro-bind", s.HostsFile, "/etc/hosts")
	}
	if s.ResolvFile != "" {
		args = append(args, "--ro-bind", s.ResolvFile, "/etc/resolv.conf")
	}
	sort.SliceStable(mounts, func(i, j int) bool { return depth(mounts[i].Target) < depth(mounts[j].Target) })
	made := map[string]bool{}
	for _, m := range mounts {
		// bwrap would create missing parents with mode 0700: create them 0755 first
		var missing []string
		onTmp := onSandboxTmp(m.Target)
		for a := filepath.Dir(m.Target); a != "/" && a != "."; a = filepath.Dir(a) {
			if sandboxSpecialDirs[a] {
				break
			}
			// Under /tmp (a fresh tmpfs in the sandbox) the host's directories do not exist.
			if _, err := fs.Lstat(a); err == nil && !onTmp {
				break
			}
			missing = append(missing, a)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			if !made[missing[i]] {
				made[missing[i]] = true
				args = append(args, "--perms", "0755", "--dir", missing[i])
			}
		}
		op := "--bind"
		if m.ReadOnly {
			op = "--ro-bind"
		}
		args = append(args, op, m.Source, m.Target)
	}
	wd := s.WorkDir
	if wd == "" {
		wd = "/"
	}
	args = append(args, "--chdir", wd, "--")
	return append(args, s.Argv...)
}

// onSandboxTmp reports whether p is below /tmp, which every sandbox gets as its own tmpfs.
func onSandboxTmp(p string) bool { return strings.HasPrefix(filepath.Clean(p), "/tmp/") }

// ProgramMounts is what a container needs to see its image's program: nothing when the host's
// read-only root shows it already; a read-only bind of the file when it lives below /tmp (a
// checkout or build directory there), which the sandbox's own tmpfs would hide.
func ProgramMounts(program string) []Mount {
	if !onSandboxTmp(program) {
		return nil
	}
	return []Mount{{Source: program, Target: program, ReadOnly: true}}
}

func depth(p string) int {
	if p == "/" {
		return 0
	}
	return strings.Count(filepath.Clean(p), "/")
}

// dialInNetns dials addr from inside a pod's network namespace (reaches 127.0.0.1 of the pod).
func dialInNetns(ctx context.Context, netns, addr string) (net.Conn, error) {
	return dialNetns(ctx, netns, addr)
}
