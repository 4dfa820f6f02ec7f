package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const fwdChain = "LOCALK8S-FWD"

// Sysctls the launcher or kube-proxy may change; their values before `up` are recorded and
// restored on exit (only those that differ then).
var watchedSysctls = []string{
	"net/ipv4/ip_forward",
	"net/ipv4/conf/all/route_localnet",
	"net/bridge/bridge-nf-call-iptables",
	"net/bridge/bridge-nf-call-ip6tables",
	"net/netfilter/nf_conntrack_max",
	"net/netfilter/nf_conntrack_tcp_timeout_established",
	"net/netfilter/nf_conntrack_tcp_timeout_close_wait",
	"net/netfilter/nf_conntrack_tcp_be_liberal",
}

func sysctlPath(k string) string { return "/proc/sys/" + k }

func readSysctl(k string) (string, error) {
	b, err := os.ReadFile(sysctlPath(k))
	return strings.TrimSpace(string(b)), err
}

func writeSysctl(k, v string) error { return os.WriteFile(sysctlPath(k), []byte(v+"\n"), 0o644) }

func linkExists(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name)
	return err == nil
}

// setupNetwork creates the bridge, the Service route, the sysctls, the forward-isolation
// rules and the CNI configuration. Every step is recorded in state before the next one.
func setupNetwork(dir string, st *stateFile) (cniConf string, err error) {
	if linkExists(bridgeName) {
		return "", fmt.Errorf("interface %s already exists: another localk8s is running on this machine "+
			"(or a crashed one: run `localk8s down --state-dir` on its state dir, or `ip link del %s`)", bridgeName, bridgeName)
	}
	if _, err := os.Stat("/proc/sys/net/bridge"); err != nil {
		return "", fmt.Errorf("/proc/sys/net/bridge is missing: load the br_netfilter kernel module (modprobe br_netfilter)")
	}
	old := map[string]string{}
	for _, k := range watchedSysctls {
		if v, err := readSysctl(k); err == nil {
			old[k] = v
		}
	}
	tables := nftTables()
	if tables == nil {
		tables = []string{}
	}
	st.update(func(s *State) { s.Sysctls = old; s.NftTables = tables })

	if _, err := run("ip", "link", "add", bridgeName, "type", "bridge"); err != nil {
		return "", err
	}
	st.update(func(s *State) { s.Bridge = bridgeName })
	if _, err := run("ip", "addr", "add", bridgeCIDR, "dev", bridgeName); err != nil {
		return "", err
	}
	if _, err := run("ip", "link", "set", bridgeName, "up"); err != nil {
		return "", err
	}
	if _, err := run("ip", "route", "add", serviceCIDR, "dev", bridgeName, "src", hostIP); err != nil {
		return "", err
	}
	st.update(func(s *State) { s.Routes = append(s.Routes, serviceCIDR) })

	if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return "", err
	}
	if err := writeSysctl("net/bridge/bridge-nf-call-iptables", "1"); err != nil {
		return "", err
	}

	// Forwarding isolation: packets may be forwarded between ports of the bridge (pod to pod,
	// pod to Service to pod) but never between the bridge and any other interface, so no pod
	// packet leaves the machine and nothing outside reaches the pods.
	if _, err := run("iptables", "-w", "-t", "filter", "-N", fwdChain); err != nil {
		return "", err
	}
	st.update(func(s *State) { s.IptChains = append(s.IptChains, "filter "+fwdChain) })
	for _, r := range [][]string{
		{"-i", bridgeName, "-o", bridgeName, "-j", "ACCEPT"},
		{"-i", bridgeName, "-j", "DROP"},
		{"-o", bridgeName, "-j", "DROP"},
	} {
		if _, err := run("iptables", append([]string{"-w", "-t", "filter", "-A", fwdChain}, r...)...); err != nil {
			return "", err
		}
	}
	jump := []string{"filter", "FORWARD", "-m", "comment", "--comment", "localk8s isolation", "-j", fwdChain}
	if _, err := run("iptables", append([]string{"-w", "-t", jump[0], "-I", jump[1], "1"}, jump[2:]...)...); err != nil {
		return "", err
	}
	st.update(func(s *State) { s.IptRules = append(s.IptRules, jump) })

	// CNI: Debian's bridge + host-local plugins; IPAM state inside DIR.
	cniDir := filepath.Join(dir, "cni")
	ipamDir := filepath.Join(cniDir, "ipam")
	_ = os.RemoveAll(ipamDir) // no pod survives a launcher restart
	if err := os.MkdirAll(ipamDir, 0o755); err != nil {
		return "", err
	}
	st.update(func(s *State) { s.CNIStateDirs = []string{ipamDir} })
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "localk8s",
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      bridgeName,
			"isGateway":   true,
			"ipMasq":      false,
			"hairpinMode": true,
			"ipam": map[string]any{
				"type": "host-local",
				"ranges": [][]map[string]string{{{
					"subnet": podCIDR, "rangeStart": "10.244.0.10", "rangeEnd": "10.244.255.254", "gateway": hostIP,
				}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": ipamDir,
			},
		}},
	}
	b, _ := json.MarshalIndent(conf, "", "  ")
	cniConf = filepath.Join(cniDir, "localk8s.conflist")
	if err := writeFileAtomic(cniConf, b, 0o644); err != nil {
		return "", err
	}
	return cniConf, nil
}

// teardownNetwork undoes what state records, tolerating what is already gone. It returns the
// problems it could not fix.
func teardownNetwork(s *State, binDir string) []string {
	var problems []string
	note := func(err error) {
		if err != nil {
			problems = append(problems, err.Error())
		}
	}
	// Pod sandboxes the agents did not remove (crash): kill their processes, delete the netns.
	prefix := s.NetnsPrefix
	if prefix == "" {
		prefix = netnsPrefix
	}
	// Only a launcher that made the bridge owns the lk8s-* namespaces (a second `up` that found
	// the bridge taken must not touch the running cluster's pods).
	if ents, err := os.ReadDir("/run/netns"); err == nil && s.Bridge != "" {
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), prefix) {
				continue
			}
			killNetnsPids(e.Name())
			if _, err := run("ip", "netns", "del", e.Name()); err != nil {
				note(err)
			}
		}
	}
	if s.KubeProxy {
		kp := filepath.Join(binDir, "kube-proxy")
		if _, err := run(kp, "--cleanup"); err != nil {
			// --cleanup exits non-zero when it found nothing to do on one backend (ipvs/nft)
			if strings.Contains(err.Error(), "executable file not found") || strings.Contains(err.Error(), "no such file") {
				note(err)
			}
		}
		// --cleanup leaves KUBE-FIREWALL (and anything a kube-proxy of another mode made):
		// remove every KUBE-* chain and the rules jumping to them.
		for _, ipt := range []string{"iptables", "ip6tables"} {
			note(removeKubeChains(ipt))
		}
	}
	for i := len(s.IptRules) - 1; i >= 0; i-- {
		r := s.IptRules[i]
		if _, err := run("iptables", append([]string{"-w", "-t", r[0], "-D", r[1]}, r[2:]...)...); err != nil &&
			!strings.Contains(err.Error(), "does a matching rule exist") && !strings.Contains(err.Error(), "No chain") &&
			!strings.Contains(err.Error(), "Bad rule") {
			note(err)
		}
	}
	for i := len(s.IptChains) - 1; i >= 0; i-- {
		tbl, ch, _ := strings.Cut(s.IptChains[i], " ")
		if _, err := run("iptables", "-w", "-t", tbl, "-F", ch); err != nil && !strings.Contains(err.Error(), "No chain") {
			note(err)
			continue
		}
		if _, err := run("iptables", "-w", "-t", tbl, "-X", ch); err != nil && !strings.Contains(err.Error(), "No chain") {
			note(err)
		}
	}
	for _, r := range s.Routes {
		if _, err := run("ip", "route", "del", r, "dev", bridgeNameOr(s)); err != nil &&
			!strings.Contains(err.Error(), "No such process") && !strings.Contains(err.Error(), "Cannot find device") {
			note(err)
		}
	}
	if s.Bridge != "" && linkExists(s.Bridge) {
		// host ends of pod veths go away with their netns; remove any left on the bridge
		if ents, err := os.ReadDir("/sys/class/net/" + s.Bridge + "/brif"); err == nil {
			for _, e := range ents {
				_, _ = run("ip", "link", "del", e.Name())
			}
		}
		if _, err := run("ip", "link", "del", s.Bridge); err != nil {
			note(err)
		}
	}
	// Last of the host changes: the CNI bridge plugin (isGateway) turns ip_forward on again at
	// every pod ADD, so this runs only after every sandbox is gone. Read back, so a value that
	// did not stick is a reported problem (and state.json stays for `down`).
	for k, v := range s.Sysctls {
		if cur, err := readSysctl(k); err == nil && cur != v {
			if err := writeSysctl(k, v); err != nil {
				note(fmt.Errorf("restoring %s to %s: %w", k, v, err))
			} else if now, _ := readSysctl(k); now != v {
				note(fmt.Errorf("restoring %s to %s: it reads %s", k, v, now))
			}
		}
	}
	// nftables tables that iptables-nft created for us (nat, mangle, ...) and that are empty now
	if s.NftTables != nil {
		before := map[string]bool{}
		for _, t := range s.NftTables {
			before[t] = true
		}
		for _, t := range nftTables() {
			if before[t] {
				continue
			}
			out, err := run("nft", append([]string{"list", "table"}, strings.Fields(t)...)...)
			if err != nil || nftHasRules(out) {
				continue
			}
			_, _ = run("nft", append([]string{"delete", "table"}, strings.Fields(t)...)...)
		}
	}
	for _, d := range s.CNIStateDirs {
		_ = os.RemoveAll(d)
	}
	return problems
}

func bridgeNameOr(s *State) string {
	if s.Bridge != "" {
		return s.Bridge
	}
	return bridgeName
}

func killNetnsPids(ns string) {
	for sig, round := syscall.SIGTERM, 0; round < 2; sig, round = syscall.SIGKILL, round+1 {
		out, err := run("ip", "netns", "pids", ns)
		if err != nil {
			return
		}
		any := false
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, sig)
				any = true
			}
		}
		if !any {
			return
		}
		time.Sleep(2 * time.Second)
	}
}

// removeKubeChains deletes every KUBE-* chain of every table, and the rules of other chains
// that jump to them, in one iptables-restore --noflush transaction per table.
func removeKubeChains(ipt string) error {
	out, err := run(ipt + "-save")
	if err != nil {
		return nil // no such backend
	}
	type tbl struct {
		name   string
		chains []string
		jumps  []string
	}
	var tables []*tbl
	var cur *tbl
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			cur = &tbl{name: line[1:]}
			tables = append(tables, cur)
		case cur == nil:
		case strings.HasPrefix(line, ":KUBE-"):
			cur.chains = append(cur.chains, strings.Fields(line[1:])[0])
		case strings.HasPrefix(line, "-A ") && !strings.HasPrefix(line, "-A KUBE-") &&
			(strings.Contains(line, " -j KUBE-") || strings.Contains(line, " -g KUBE-")):
			cur.jumps = append(cur.jumps, "-D "+line[3:])
		}
	}
	for _, t := range tables {
		if len(t.chains) == 0 && len(t.jumps) == 0 {
			continue
		}
		var b strings.Builder
		b.WriteString("*" + t.name + "\n")
		for _, j := range t.jumps {
			b.WriteString(j + "\n")
		}
		for _, c := range t.chains {
			b.WriteString("-F " + c + "\n")
		}
		for _, c := range t.chains {
			b.WriteString("-X " + c + "\n")
		}
		b.WriteString("COMMIT\n")
		cmd := exec.Command(ipt+"-restore", "-w", "--noflush")
		cmd.Stdin = strings.NewReader(b.String())
		if o, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s-restore (removing KUBE-* chains of %s): %v: %s", ipt, t.name, err, strings.TrimSpace(string(o)))
		}
	}
	return nil
}

// nftTables lists "family name" of every nftables table, or nil without nft.
func nftTables() []string {
	out, err := run("nft", "list", "tables")
	if err != nil {
		return nil
	}
	var ts []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "table" {
			ts = append(ts, f[1]+" "+f[2])
		}
	}
	return ts
}

// nftHasRules reports whether `nft list table` output has anything but chain headers.
func nftHasRules(out string) bool {
	for _, line := range strings.Split(out, "\n") {
		l := strings.TrimSpace(line)
		if l == "" || l == "}" || strings.HasPrefix(l, "table ") || strings.HasPrefix(l, "chain ") ||
			strings.HasPrefix(l, "type ") || strings.HasPrefix(l, "#") {
			continue
		}
		return true
	}
	return false
}
