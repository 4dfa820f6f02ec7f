package agent

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// EnvVar is one resolved environment variable.
type EnvVar struct{ Name, Value string }

// ObjectSource resolves the objects env and volumes refer to. A missing object is reported as
// an error for which IsNotFound(err) is true.
type ObjectSource interface {
	Secret(namespace, name string) (map[string][]byte, error)
	ConfigMap(namespace, name string) (map[string]string, error)
}

// NotFoundError marks a missing Secret or ConfigMap (or key).
type NotFoundError struct{ What string }

func (e *NotFoundError) Error() string { return e.What + " not found" }

// IsNotFound tells whether err is a NotFoundError.
func IsNotFound(err error) bool { _, ok := err.(*NotFoundError); return ok }

// PodRuntimeInfo carries the values only the node knows, for the downward API.
type PodRuntimeInfo struct {
	PodIP, HostIP string
	NodeName      string
	// NodeAllocatable is used for resourceFieldRef of containers without limits.
	NodeAllocatable corev1.ResourceList
}

// ServiceEnv returns the variables of the kubernetes master Service, which every
// container gets (KUBERNETES_SERVICE_HOST/PORT...).
func ServiceEnv(host string, port int) []EnvVar {
	p := strconv.Itoa(port)
	url := fmt.Sprintf("tcp://%s:%s", host, p)
	return []EnvVar{
		{"KUBERNETES_SERVICE_HOST", host},
		{"KUBERNETES_SERVICE_PORT", p},
		{"KUBERNETES_SERVICE_PORT_HTTPS", p},
		{"KUBERNETES_PORT", url},
		{"KUBERNETES_PORT_" + p + "_TCP", url},
		{"KUBERNETES_PORT_" + p + "_TCP_PROTO", "tcp"},
		{"KUBERNETES_PORT_" + p + "_TCP_PORT", p},
		{"KUBERNETES_PORT_" + p + "_TCP_ADDR", host},
	}
}

// BuildEnv computes a container's environment the way the kubelet does
// (makeEnvironmentVariables): service variables, then envFrom in order, then env in order,
// each env value $(VAR)-expanded against the variables defined before it and the service
// variables. The result is sorted by name for determinism.
func BuildEnv(pod *corev1.Pod, c *corev1.Container, rt PodRuntimeInfo, serviceEnv []EnvVar, src ObjectSource) ([]EnvVar, error) {
	result := map[string]string{}
	svc := map[string]string{}
	for _, e := range serviceEnv {
		svc[e.Name] = e.Value
		result[e.Name] = e.Value
	}
	tmp := map[string]string{}
	ns := pod.Namespace

	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			optional := ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional
			data, err := src.ConfigMap(ns, ef.ConfigMapRef.Name)
			if err != nil {
				if IsNotFound(err) && optional {
					continue
				}
				return nil, fmt.Errorf("configmap %q: %w", ef.ConfigMapRef.Name, err)
			}
			for k, v := range data {
				k = ef.Prefix + k
				if !validEnvName(k) {
					continue
				}
				tmp[k] = v
			}
		case ef.SecretRef != nil:
			optional := ef.SecretRef.Optional != nil && *ef.SecretRef.Optional
			data, err := src.Secret(ns, ef.SecretRef.Name)
			if err != nil {
				if IsNotFound(err) && optional {
					continue
				}
				return nil, fmt.Errorf("secret %q: %w", ef.SecretRef.Name, err)
			}
			for k, v := range data {
				k = ef.Prefix + k
				if !validEnvName(k) {
					continue
				}
				tmp[k] = string(v)
			}
		}
	}

	for _, e := range c.Env {
		val := e.Value
		if e.ValueFrom == nil {
			val = ExpandVars(val, func(n string) (string, bool) {
				if v, ok := tmp[n]; ok {
					return v, true
				}
				v, ok := svc[n]
				return v, ok
			})
			tmp[e.Name] = val
			continue
		}
		vf := e.ValueFrom
		switch {
		case vf.FieldRef != nil:
			v, err := PodFieldValue(pod, vf.FieldRef.FieldPath, rt)
			if err != nil {
				return nil, err
			}
			val = v
		case vf.ResourceFieldRef != nil:
			v, err := ResourceFieldValue(pod, c.Name, vf.ResourceFieldRef, rt.NodeAllocatable)
			if err != nil {
				return nil, err
			}
			val = v
		case vf.ConfigMapKeyRef != nil:
			ref := vf.ConfigMapKeyRef
			optional := ref.Optional != nil && *ref.Optional
			data, err := src.ConfigMap(ns, ref.Name)
			if err != nil {
				if IsNotFound(err) && optional {
					continue
				}
				return nil, fmt.Errorf("configmap %q: %w", ref.Name, err)
			}
			v, ok := data[ref.Key]
			if !ok {
				if optional {
					continue
				}
				return nil, fmt.Errorf("couldn't find key %s in ConfigMap %s/%s", ref.Key, ns, ref.Name)
			}
			val = v
		case vf.SecretKeyRef != nil:
			ref := vf.SecretKeyRef
			optional := ref.Optional != nil && *ref.Optional
			data, err := src.Secret(ns, ref.Name)
			if err != nil {
				if IsNotFound(err) && optional {
					continue
				}
				return nil, fmt.Errorf("secret %q: %w", ref.Name, err)
			}
			v, ok := data[ref.Key]
			if !ok {
				if optional {
					continue
				}
				return nil, fmt.Errorf("couldn't find key %s in Secret %s/%s", ref.Key, ns, ref.Name)
			}
			val = string(v)
		}
		tmp[e.Name] = val
	}
	for k, v := range tmp {
		result[k] = v
	}
	out := make([]EnvVar, 0, len(result))
	for k, v := range result {
		out = append(out, EnvVar{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func envMap(env []EnvVar) func(string) (string, bool) {
	m := make(map[string]string, len(env))
	for _, e := range env {
		m[e.Name] = e.Value
	}
	return func(n string) (string, bool) { v, ok := m[n]; return v, ok }
}

// EnvStrings renders env as NAME=VALUE strings.
func EnvStrings(env []EnvVar) []string {
	out := make([]string, len(env))
	for i, e := range env {
		out[i] = e.Name + "=" + e.Value
	}
	return out
}

// ExpandVars expands $(VAR) references like the kubelet (third_party/forked/golang/expansion):
// $(VAR) is replaced when VAR is defined and left as is otherwise, $$ escapes a $, and an
// unclosed $( is kept literally.
func ExpandVars(input string, mapping func(string) (string, bool)) string {
	var buf strings.Builder
	checkpoint := 0
	for cursor := 0; cursor < len(input); cursor++ {
		if input[cursor] == '$' && cursor+1 < len(input) {
			buf.WriteString(input[checkpoint:cursor])
			read, isVar, advance := tryReadVariableName(input[cursor+1:])
			if isVar {
				if v, ok := mapping(read); ok {
					buf.WriteString(v)
				} else {
					buf.WriteString("$(" + read + ")")
				}
			} else {
				buf.WriteString(read)
			}
			cursor += advance
			checkpoint = cursor + 1
		}
	}
	return buf.String() + input[checkpoint:]
}

func tryReadVariableName(input string) (string, bool, int) {
	switch input[0] {
	case '$':
		return "$", false, 1
	case '(':
		for i := 1; i < len(input); i++ {
			if input[i] == ')' {
				return input[1:i], true, i + 1
			}
		}
		return "$(", false, 1
	default:
		return "$" + input[0:1], false, 1
	}
}

// PodFieldValue resolves a downward-API fieldPath.
func PodFieldValue(pod *corev1.Pod, path string, rt PodRuntimeInfo) (string, error) {
	if strings.HasPrefix(path, "metadata.labels['") && strings.HasSuffix(path, "']") {
		return pod.Labels[path[len("metadata.labels['"):len(path)-2]], nil
	}
	if strings.HasPrefix(path, "metadata.annotations['") && strings.HasSuffix(path, "']") {
		return pod.Annotations[path[len("metadata.annotations['"):len(path)-2]], nil
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	case "spec.nodeName":
		if pod.Spec.NodeName != "" {
			return pod.Spec.NodeName, nil
		}
		return rt.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return rt.PodIP, nil
	case "status.hostIP", "status.hostIPs":
		return rt.HostIP, nil
	}
	return "", fmt.Errorf("unsupported fieldPath %q", path)
}

// formatMap renders labels/annotations as the downward API does: key="value" lines, sorted.
func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "%s=%s", k, strconv.Quote(m[k]))
	}
	return b.String()
}

// ResourceFieldValue resolves a resourceFieldRef (limits.cpu, requests.memory, ...), with the
// node's allocatable standing in for a missing limit, rounded up to the divisor like the kubelet.
func ResourceFieldValue(pod *corev1.Pod, defaultContainer string, ref *corev1.ResourceFieldSelector, alloc corev1.ResourceList) (string, error) {
	name := ref.ContainerName
	if name == "" {
		name = defaultContainer
	}
	var c *corev1.Container
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name {
			c = &pod.Spec.Containers[i]
		}
	}
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == name {
			c = &pod.Spec.InitContainers[i]
		}
	}
	if c == nil {
		return "", fmt.Errorf("container %q not found for resourceFieldRef", name)
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	var q resource.Quantity
	var ok bool
	parts := strings.SplitN(ref.Resource, ".", 2)
	if len(parts) != 2 {
		return "", fmt.Errorf("unsupported resource %q", ref.Resource)
	}
	rn := corev1.ResourceName(parts[1])
	switch parts[0] {
	case "limits":
		q, ok = c.Resources.Limits[rn]
		if !ok {
			q, ok = alloc[rn]
		}
	case "requests":
		q, ok = c.Resources.Requests[rn]
		if !ok {
			q, ok = resource.Quantity{}, true
		}
	default:
		return "", fmt.Errorf("unsupported resource %q", ref.Resource)
	}
	if !ok {
		return "0", nil
	}
	if rn == corev1.ResourceCPU {
		v := int64(math.Ceil(float64(q.MilliValue()) / float64(divisor.MilliValue())))
		return strconv.FormatInt(v, 10), nil
	}
	v := int64(math.Ceil(float64(q.Value()) / float64(divisor.Value())))
	return strconv.FormatInt(v, 10), nil
}

// validEnvName is the relaxed env var name rule (RelaxedEnvironmentVariableValidation, GA in
// Kubernetes 1.34): printable ASCII without '='.
func validEnvName(k string) bool {
	if k == "" {
		return false
	}
	for _, r := range k {
		if r < 32 || r > 126 || r == '=' {
			return false
		}
	}
	return true
}

// ServiceLinkEnv returns the Docker-link style variables the kubelet injects for the Services
// of a namespace (enableServiceLinks, default true): NAME_SERVICE_HOST, NAME_SERVICE_PORT,
// NAME_SERVICE_PORT_<PORTNAME>, NAME_PORT, NAME_PORT_<P>_<PROTO>[_PROTO|_PORT|_ADDR].
// Headless Services and Services without a ClusterIP are skipped.
func ServiceLinkEnv(services []*corev1.Service) []EnvVar {
	sorted := append([]*corev1.Service(nil), services...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	var out []EnvVar
	for _, s := range sorted {
		ip := s.Spec.ClusterIP
		if ip == "" || ip == corev1.ClusterIPNone || len(s.Spec.Ports) == 0 {
			continue
		}
		name := strings.ToUpper(strings.ReplaceAll(s.Name, "-", "_"))
		first := s.Spec.Ports[0]
		out = append(out, EnvVar{name + "_SERVICE_HOST", ip}, EnvVar{name + "_SERVICE_PORT", strconv.Itoa(int(first.Port))})
		for _, p := range s.Spec.Ports {
			if p.Name != "" {
				out = append(out, EnvVar{name + "_SERVICE_PORT_" + strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_")), strconv.Itoa(int(p.Port))})
			}
		}
		proto := func(p corev1.ServicePort) string {
			if p.Protocol == "" {
				return "TCP"
			}
			return string(p.Protocol)
		}
		out = append(out, EnvVar{name + "_PORT", fmt.Sprintf("%s://%s:%d", strings.ToLower(proto(first)), ip, first.Port)})
		for _, p := range s.Spec.Ports {
			pre := fmt.Sprintf("%s_PORT_%d_%s", name, p.Port, strings.ToUpper(proto(p)))
			out = append(out,
				EnvVar{pre, fmt.Sprintf("%s://%s:%d", strings.ToLower(proto(p)), ip, p.Port)},
				EnvVar{pre + "_PROTO", strings.ToLower(proto(p))},
				EnvVar{pre + "_PORT", strconv.Itoa(int(p.Port))},
				EnvVar{pre + "_ADDR", ip})
		}
	}
	return out
}
