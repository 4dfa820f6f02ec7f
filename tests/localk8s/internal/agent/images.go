package agent

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// ImageRepo strips the tag and digest from an image reference:
// "reg:5000/a/b:1.2@sha256:..." -> "reg:5000/a/b".
func ImageRepo(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	slash := strings.LastIndex(image, "/")
	if c := strings.LastIndex(image, ":"); c > slash {
		image = image[:c]
	}
	return image
}

// LookupImage finds the program that plays an image's entrypoint. Keys of images are
// repositories (tags ignored on both sides). A key matches the full repository, the repository
// without a "docker.io/" or "docker.io/library/" prefix, or the repository's last path element.
func LookupImage(images map[string]string, image string) (string, bool) {
	repo := ImageRepo(image)
	cands := []string{repo}
	for _, p := range []string{"docker.io/library/", "docker.io/", "index.docker.io/library/", "library/"} {
		if strings.HasPrefix(repo, p) {
			cands = append(cands, strings.TrimPrefix(repo, p))
		}
	}
	if i := strings.LastIndex(repo, "/"); i >= 0 {
		cands = append(cands, repo[i+1:])
	}
	norm := make(map[string]string, len(images))
	for k, v := range images {
		norm[ImageRepo(k)] = v
	}
	for _, c := range cands {
		if p, ok := norm[c]; ok {
			return p, true
		}
	}
	// a key given with a registry matches the image's short name too
	for k, v := range norm {
		if i := strings.LastIndex(k, "/"); i >= 0 && k[i+1:] == repo {
			return v, true
		}
	}
	return "", false
}

// ErrImageNotMapped is the message of a container whose image has no local program.
func ErrImageNotMapped(image string) string {
	return fmt.Sprintf("image %q is not mapped to a local program (localk8s runs images as local programs: add --image %s=PROGRAM)", image, ImageRepo(image))
}

// ContainerArgv computes the argv a container runs: with `command`, that command (expanded)
// and its args; without, PROGRAM (split on spaces) followed by the expanded args.
// env is the container's final environment, used for $(VAR) expansion.
func ContainerArgv(program string, c *corev1.Container, env []EnvVar) []string {
	m := envMap(env)
	var argv []string
	if len(c.Command) > 0 {
		for _, s := range c.Command {
			argv = append(argv, ExpandVars(s, m))
		}
	} else {
		argv = append(argv, strings.Fields(program)...)
	}
	for _, s := range c.Args {
		argv = append(argv, ExpandVars(s, m))
	}
	return argv
}

// ProgramMissing checks that the program an image is mapped to exists (an absolute or relative
// path: an executable file; a bare name: on PATH). It returns the ErrImagePull message if not,
// "" if the program is there.
func ProgramMissing(image, program string) string {
	f := strings.Fields(program)
	if len(f) == 0 {
		return fmt.Sprintf("image %q is mapped to an empty program", image)
	}
	if strings.Contains(f[0], "/") {
		st, err := os.Stat(f[0])
		if err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return ""
		}
		return fmt.Sprintf("image %q is mapped to the program %s, which does not exist or is not executable (build it: make build)", image, f[0])
	}
	if _, err := exec.LookPath(f[0]); err != nil {
		return fmt.Sprintf("image %q is mapped to the program %q, which is not on PATH", image, f[0])
	}
	return ""
}
