package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fileData is one file of a configMap/secret/downwardAPI/projected volume.
type fileData struct {
	Data []byte
	Mode os.FileMode
}

// apiObjects resolves Secrets and ConfigMaps through the API (the Node authorizer lets a node
// read those its pods reference) with a short cache.
type apiObjects struct {
	p *Provider
}

func (a apiObjects) Secret(ns, name string) (map[string][]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := a.p.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, &NotFoundError{What: fmt.Sprintf("secret %s/%s", ns, name)}
	}
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for k, v := range s.Data {
		out[k] = v
	}
	for k, v := range s.StringData {
		out[k] = []byte(v)
	}
	return out, nil
}

func (a apiObjects) ConfigMap(ns, name string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := a.p.client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, &NotFoundError{What: fmt.Sprintf("configmap %s/%s", ns, name)}
	}
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range c.Data {
		out[k] = v
	}
	for k, v := range c.BinaryData {
		out[k] = string(v)
	}
	return out, nil
}

func modeOr(m *int32, def os.FileMode) os.FileMode {
	if m != nil {
		return os.FileMode(*m) & 0o777
	}
	return def
}

// keyPayload maps data keys to files per items (or all keys when items is empty).
func keyPayload(data map[string][]byte, items []corev1.KeyToPath, defMode os.FileMode, optional bool, what string) (map[string]fileData, error) {
	out := map[string]fileData{}
	if len(items) == 0 {
		for k, v := range data {
			out[k] = fileData{v, defMode}
		}
		return out, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional {
				continue
			}
			return nil, fmt.Errorf("configuration of %s: key %q not found", what, it.Key)
		}
		out[it.Path] = fileData{v, modeOr(it.Mode, defMode)}
	}
	return out, nil
}

func (pr *podRuntime) secretPayload(ns, name string, items []corev1.KeyToPath, defMode os.FileMode, optional bool) (map[string]fileData, error) {
	data, err := apiObjects{pr.p}.Secret(ns, name)
	if err != nil {
		if IsNotFound(err) && optional {
			return map[string]fileData{}, nil
		}
		return nil, err
	}
	return keyPayload(data, items, defMode, optional, "secret "+name)
}

func (pr *podRuntime) configMapPayload(ns, name string, items []corev1.KeyToPath, defMode os.FileMode, optional bool) (map[string]fileData, error) {
	data, err := apiObjects{pr.p}.ConfigMap(ns, name)
	if err != nil {
		if IsNotFound(err) && optional {
			return map[string]fileData{}, nil
		}
		return nil, err
	}
	b := map[string][]byte{}
	for k, v := range data {
		b[k] = []byte(v)
	}
	return keyPayload(b, items, defMode, optional, "configmap "+name)
}

func (pr *podRuntime) downwardPayload(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, defMode os.FileMode) (map[string]fileData, error) {
	out := map[string]fileData{}
	rt := pr.runtimeInfo()
	for _, it := range items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			v, err = PodFieldValue(pod, it.FieldRef.FieldPath, rt)
		case it.ResourceFieldRef != nil:
			v, err = ResourceFieldValue(pod, "", it.ResourceFieldRef, rt.NodeAllocatable)
		}
		if err != nil {
			return nil, err
		}
		out[it.Path] = fileData{[]byte(v), modeOr(it.Mode, defMode)}
	}
	return out, nil
}

type cachedToken struct {
	token   string
	issued  time.Time
	expires time.Time
}

func (pr *podRuntime) saToken(ctx context.Context, pod *corev1.Pod, audience string, expSeconds int64) (string, error) {
	key := fmt.Sprintf("%s|%d", audience, expSeconds)
	pr.mu.Lock()
	t := pr.tokens[key]
	pr.mu.Unlock()
	now := time.Now()
	if t != nil {
		ttl := t.expires.Sub(t.issued)
		if now.Before(t.issued.Add(ttl*8/10)) && now.Sub(t.issued) < 24*time.Hour {
			return t.token, nil
		}
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr := &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		ExpirationSeconds: &expSeconds,
		BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if audience != "" {
		tr.Spec.Audiences = []string{audience}
	}
	res, err := pr.p.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, tr, metav1.CreateOptions{})
	if err != nil {
		if t != nil && now.Before(t.expires) {
			return t.token, nil
		}
		return "", fmt.Errorf("token request for serviceaccount %s/%s: %w", pod.Namespace, sa, err)
	}
	nt := &cachedToken{token: res.Status.Token, issued: now, expires: res.Status.ExpirationTimestamp.Time}
	if !nt.expires.After(now) {
		nt.expires = now.Add(time.Duration(expSeconds) * time.Second)
	}
	pr.mu.Lock()
	pr.tokens[key] = nt
	pr.mu.Unlock()
	return nt.token, nil
}

// volumePayload computes the files of an API-backed volume, or nil for directory volumes.
func (pr *podRuntime) volumePayload(ctx context.Context, pod *corev1.Pod, v *corev1.Volume) (map[string]fileData, bool, error) {
	ns := pod.Namespace
	switch {
	case v.Secret != nil:
		s := v.Secret
		return must(pr.secretPayload(ns, s.SecretName, s.Items, modeOr(s.DefaultMode, 0o644), s.Optional != nil && *s.Optional))
	case v.ConfigMap != nil:
		c := v.ConfigMap
		return must(pr.configMapPayload(ns, c.Name, c.Items, modeOr(c.DefaultMode, 0o644), c.Optional != nil && *c.Optional))
	case v.DownwardAPI != nil:
		return must(pr.downwardPayload(pod, v.DownwardAPI.Items, modeOr(v.DownwardAPI.DefaultMode, 0o644)))
	case v.Projected != nil:
		def := modeOr(v.Projected.DefaultMode, 0o644)
		out := map[string]fileData{}
		for _, src := range v.Projected.Sources {
			var part map[string]fileData
			var err error
			switch {
			case src.Secret != nil:
				part, err = pr.secretPayload(ns, src.Secret.Name, src.Secret.Items, def, src.Secret.Optional != nil && *src.Secret.Optional)
			case src.ConfigMap != nil:
				part, err = pr.configMapPayload(ns, src.ConfigMap.Name, src.ConfigMap.Items, def, src.ConfigMap.Optional != nil && *src.ConfigMap.Optional)
			case src.DownwardAPI != nil:
				part, err = pr.downwardPayload(pod, src.DownwardAPI.Items, def)
			case src.ServiceAccountToken != nil:
				exp := int64(3600)
				if src.ServiceAccountToken.ExpirationSeconds != nil {
					exp = *src.ServiceAccountToken.ExpirationSeconds
				}
				var tok string
				tok, err = pr.saToken(ctx, pod, src.ServiceAccountToken.Audience, exp)
				mode := def
				if v.Projected.DefaultMode == nil {
					mode = 0o600
				}
				part = map[string]fileData{src.ServiceAccountToken.Path: {[]byte(tok), mode}}
			}
			if err != nil {
				return nil, true, err
			}
			for k, f := range part {
				out[k] = f
			}
		}
		return out, true, nil
	}
	return nil, false, nil
}

func must(m map[string]fileData, err error) (map[string]fileData, bool, error) { return m, true, err }

// WriteAtomic writes files into dir the way the kubelet's AtomicWriter does: a timestamped
// directory, a "..data" symlink swapped atomically, and top-level symlinks through "..data",
// so a bind-mounted volume sees new contents in place. It does nothing if nothing changed.
func WriteAtomic(dir string, files map[string]fileData) (bool, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	dataLink := filepath.Join(dir, "..data")
	if old, err := os.Readlink(dataLink); err == nil {
		same := true
		oldDir := filepath.Join(dir, old)
		n := 0
		_ = filepath.Walk(oldDir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				n++
			}
			return nil
		})
		if n != len(files) {
			same = false
		}
		for k, f := range files {
			if !same {
				break
			}
			b, err := os.ReadFile(filepath.Join(oldDir, k))
			fi, err2 := os.Stat(filepath.Join(oldDir, k))
			if err != nil || err2 != nil || !bytes.Equal(b, f.Data) || fi.Mode().Perm() != f.Mode {
				same = false
			}
		}
		if same {
			return false, nil
		}
	}
	ts := "..%s" + fmt.Sprint(time.Now().UnixNano())
	tsName := fmt.Sprintf(ts, time.Now().UTC().Format("2006_01_02_15_04_05."))
	tsDir := filepath.Join(dir, tsName)
	if err := os.MkdirAll(tsDir, 0o755); err != nil {
		return false, err
	}
	keys := make([]string, 0, len(files))
	for k := range files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	top := map[string]bool{}
	for _, k := range keys {
		f := files[k]
		clean := filepath.Clean(k)
		if filepath.IsAbs(clean) || strings.HasPrefix(clean, "..") {
			continue
		}
		p := filepath.Join(tsDir, clean)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return false, err
		}
		if err := os.WriteFile(p, f.Data, f.Mode); err != nil {
			return false, err
		}
		if err := os.Chmod(p, f.Mode); err != nil {
			return false, err
		}
		top[strings.SplitN(clean, "/", 2)[0]] = true
	}
	tmpLink := filepath.Join(dir, "..data_tmp")
	os.Remove(tmpLink)
	if err := os.Symlink(tsName, tmpLink); err != nil {
		return false, err
	}
	old, _ := os.Readlink(dataLink)
	if err := os.Rename(tmpLink, dataLink); err != nil {
		return false, err
	}
	for t := range top {
		lp := filepath.Join(dir, t)
		if cur, err := os.Readlink(lp); err == nil && cur == filepath.Join("..data", t) {
			continue
		}
		os.RemoveAll(lp)
		if err := os.Symlink(filepath.Join("..data", t), lp); err != nil {
			return false, err
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "..") {
			continue
		}
		if !top[n] {
			os.RemoveAll(filepath.Join(dir, n))
		}
	}
	if old != "" && old != tsName {
		os.RemoveAll(filepath.Join(dir, old))
	}
	return true, nil
}

// prepareVolumes materializes every volume of the pod and returns name -> host directory.
func (pr *podRuntime) prepareVolumes(ctx context.Context) (map[string]string, error) {
	pod := pr.currentPod()
	paths := map[string]string{}
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		dir := filepath.Join(pr.dir, "volumes", v.Name)
		switch {
		case v.EmptyDir != nil:
			if err := os.MkdirAll(dir, 0o777); err != nil {
				return nil, err
			}
			os.Chmod(dir, 0o777)
			paths[v.Name] = dir
		case v.HostPath != nil:
			p := v.HostPath.Path
			t := corev1.HostPathUnset
			if v.HostPath.Type != nil {
				t = *v.HostPath.Type
			}
			switch t {
			case corev1.HostPathDirectoryOrCreate:
				if err := os.MkdirAll(p, 0o755); err != nil {
					return nil, err
				}
			case corev1.HostPathFileOrCreate:
				if _, err := os.Stat(p); os.IsNotExist(err) {
					os.MkdirAll(filepath.Dir(p), 0o755)
					if err := os.WriteFile(p, nil, 0o644); err != nil {
						return nil, err
					}
				}
			case corev1.HostPathDirectory, corev1.HostPathFile, corev1.HostPathSocket:
				if _, err := os.Stat(p); err != nil {
					return nil, fmt.Errorf("hostPath %s: %w", p, err)
				}
			}
			paths[v.Name] = p
		case v.PersistentVolumeClaim != nil:
			p, err := pr.pvcPath(ctx, pod.Namespace, v.PersistentVolumeClaim.ClaimName)
			if err != nil {
				return nil, err
			}
			paths[v.Name] = p
		case v.Ephemeral != nil:
			p, err := pr.pvcPath(ctx, pod.Namespace, pod.Name+"-"+v.Name)
			if err != nil {
				return nil, err
			}
			paths[v.Name] = p
		default:
			files, ok, err := pr.volumePayload(ctx, pod, v)
			if !ok {
				// unsupported volume type: give an empty directory
				os.MkdirAll(dir, 0o755)
				paths[v.Name] = dir
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("volume %q: %w", v.Name, err)
			}
			if _, err := WriteAtomic(dir, files); err != nil {
				return nil, fmt.Errorf("volume %q: %w", v.Name, err)
			}
			paths[v.Name] = dir
		}
	}
	return paths, nil
}

// refreshVolumes rewrites configMap/secret/downwardAPI/projected volumes in place.
func (pr *podRuntime) refreshVolumes(ctx context.Context) {
	pod := pr.currentPod()
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		if v.Secret == nil && v.ConfigMap == nil && v.DownwardAPI == nil && v.Projected == nil {
			continue
		}
		files, _, err := pr.volumePayload(ctx, pod, v)
		if err != nil {
			pr.p.logf("pod %s: refresh volume %s: %v", pr.key, v.Name, err)
			continue
		}
		if _, err := WriteAtomic(filepath.Join(pr.dir, "volumes", v.Name), files); err != nil {
			pr.p.logf("pod %s: refresh volume %s: %v", pr.key, v.Name, err)
		}
	}
	pr.mu.Lock()
	owner := pr.tokenOwner
	pr.mu.Unlock()
	if owner != nil {
		pr.chownTokens(*owner)
	}
}

func (pr *podRuntime) pvcPath(ctx context.Context, ns, claim string) (string, error) {
	pvc, err := pr.p.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("persistentvolumeclaim %q: %w", claim, err)
	}
	if pvc.Spec.VolumeName == "" || pvc.Status.Phase != corev1.ClaimBound {
		return "", fmt.Errorf("persistentvolumeclaim %q is not bound", claim)
	}
	pv, err := pr.p.client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("persistentvolume %q: %w", pvc.Spec.VolumeName, err)
	}
	var p string
	switch {
	case pv.Spec.HostPath != nil:
		p = pv.Spec.HostPath.Path
	case pv.Spec.Local != nil:
		p = pv.Spec.Local.Path
	default:
		return "", fmt.Errorf("persistentvolume %q is neither hostPath nor local", pv.Name)
	}
	if err := os.MkdirAll(p, 0o777); err != nil {
		return "", err
	}
	return p, nil
}

// apiVolumeNames lists the configMap/secret/downwardAPI/projected volumes, which the kubelet
// always mounts read-only.
func apiVolumeNames(pod *corev1.Pod) map[string]bool {
	out := map[string]bool{}
	for _, v := range pod.Spec.Volumes {
		if v.ConfigMap != nil || v.Secret != nil || v.DownwardAPI != nil || v.Projected != nil {
			out[v.Name] = true
		}
	}
	return out
}

// containerMounts maps a container's volumeMounts onto host paths (subPath, readOnly,
// subPathExpr expanded with the container env) plus the generated files.
func containerMounts(c *corev1.Container, vols map[string]string, apiVolumes map[string]bool, env []EnvVar) ([]Mount, error) {
	var out []Mount
	m := envMap(env)
	for _, vm := range c.VolumeMounts {
		src, ok := vols[vm.Name]
		if !ok {
			return nil, fmt.Errorf("volume %q not found", vm.Name)
		}
		sub := vm.SubPath
		if vm.SubPathExpr != "" {
			sub = ExpandVars(vm.SubPathExpr, m)
		}
		if sub != "" {
			clean := filepath.Clean(sub)
			if filepath.IsAbs(clean) || strings.HasPrefix(clean, "..") {
				return nil, fmt.Errorf("invalid subPath %q", sub)
			}
			p := filepath.Join(src, clean)
			if _, err := os.Lstat(p); os.IsNotExist(err) {
				if err := os.MkdirAll(p, 0o777); err != nil {
					return nil, err
				}
			}
			src = p
		}
		out = append(out, Mount{Source: src, Target: vm.MountPath, ReadOnly: vm.ReadOnly || apiVolumes[vm.Name]})
	}
	return out, nil
}

// chownTokens gives the projected service-account token files to uid (mode 0600), as the
// kubelet does when the containers run as a non-root user.
func (pr *podRuntime) chownTokens(uid int64) {
	pod := pr.currentPod()
	for _, v := range pod.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, src := range v.Projected.Sources {
			if src.ServiceAccountToken == nil {
				continue
			}
			p := filepath.Join(pr.dir, "volumes", v.Name, src.ServiceAccountToken.Path)
			if real, err := filepath.EvalSymlinks(p); err == nil {
				os.Chown(real, int(uid), -1)
			}
		}
	}
}
