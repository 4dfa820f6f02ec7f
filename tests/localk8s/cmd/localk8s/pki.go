package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// pki is DIR/pki: one CA (ECDSA P-256) and every certificate signed by it. Files are created
// once and kept; a certificate whose subject or SANs no longer match what the launcher wants
// is re-issued (the CA and the service-account key never change).
type pki struct {
	dir    string
	caCert *x509.Certificate
	caKey  crypto.Signer
}

type certSpec struct {
	CN     string
	O      []string
	DNS    []string
	IPs    []string
	Server bool
	Client bool
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

func newPKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{dir: dir}
	crtPath, keyPath := p.path("ca.crt"), p.path("ca.key")
	if c, k, err := loadPair(crtPath, keyPath); err == nil {
		p.caCert, p.caKey = c, k
		return p, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("loading CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "localk8s-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	if err := writeKey(keyPath, key); err != nil {
		return nil, err
	}
	if err := writePEM(crtPath, "CERTIFICATE", der, 0o644); err != nil {
		return nil, err
	}
	p.caCert, _ = x509.ParseCertificate(der)
	p.caKey = key
	return p, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// ensure issues DIR/pki/NAME.crt and NAME.key for spec unless a matching pair is there.
func (p *pki) ensure(name string, s certSpec) error {
	crtPath, keyPath := p.path(name+".crt"), p.path(name+".key")
	if c, _, err := loadPair(crtPath, keyPath); err == nil && matches(c, s) && c.CheckSignatureFrom(p.caCert) == nil &&
		time.Until(c.NotAfter) > 30*24*time.Hour {
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: s.CN, Organization: s.O},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(5, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		DNSNames:              s.DNS,
	}
	for _, ip := range s.IPs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	if s.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if s.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, key.Public(), p.caKey)
	if err != nil {
		return err
	}
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	return writePEM(crtPath, "CERTIFICATE", der, 0o644)
}

func matches(c *x509.Certificate, s certSpec) bool {
	if c.Subject.CommonName != s.CN || !slices.Equal(c.Subject.Organization, s.O) || !slices.Equal(c.DNSNames, s.DNS) {
		return false
	}
	var ips []string
	for _, ip := range c.IPAddresses {
		ips = append(ips, ip.String())
	}
	return slices.Equal(ips, s.IPs)
}

// ensureSAKey creates the service-account signing key pair (sa.key, sa.pub) once.
func (p *pki) ensureSAKey() error {
	keyPath, pubPath := p.path("sa.key"), p.path("sa.pub")
	if _, err := os.Stat(keyPath); err == nil {
		if _, err := os.Stat(pubPath); err == nil {
			return nil
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	return writePEM(pubPath, "PUBLIC KEY", pub, 0o644)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "EC PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func loadPair(crtPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	cb, err := os.ReadFile(crtPath)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	if cblk == nil || kblk == nil {
		return nil, nil, fmt.Errorf("%s or %s: not PEM", crtPath, keyPath)
	}
	c, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, nil, err
	}
	k, err := x509.ParseECPrivateKey(kblk.Bytes)
	if err != nil {
		return nil, nil, err
	}
	return c, k, nil
}

// kubeconfig writes a kubeconfig for server with the client pair NAME.crt/key embedded, so the
// file can be copied elsewhere.
func (p *pki) kubeconfig(path, server, name string) error {
	ca, err := os.ReadFile(p.path("ca.crt"))
	if err != nil {
		return err
	}
	crt, err := os.ReadFile(p.path(name + ".crt"))
	if err != nil {
		return err
	}
	key, err := os.ReadFile(p.path(name + ".key"))
	if err != nil {
		return err
	}
	b64 := base64.StdEncoding.EncodeToString
	s := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: localk8s
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: localk8s
  context:
    cluster: localk8s
    user: %s
current-context: localk8s
`, server, b64(ca), name, b64(crt), b64(key), name)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return writeFileAtomic(path, []byte(s), 0o600)
}

// setupPKI issues everything the cluster needs for nodes node-1..node-N.
func setupPKI(dir string, nodes []string) (*pki, error) {
	p, err := newPKI(filepath.Join(dir, "pki"))
	if err != nil {
		return nil, err
	}
	if err := p.ensureSAKey(); err != nil {
		return nil, err
	}
	specs := map[string]certSpec{
		"apiserver": {CN: "kube-apiserver", Server: true,
			DNS: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc",
				"kubernetes.default.svc." + clusterDomain, "localhost"},
			IPs: []string{kubernetesSvcIP, "127.0.0.1", hostIP}},
		"apiserver-kubelet-client": {CN: "kube-apiserver-kubelet-client", O: []string{"system:masters"}, Client: true},
		"admin":                    {CN: "kubernetes-admin", O: []string{"system:masters"}, Client: true},
		"front-proxy-client":       {CN: "front-proxy-client", Client: true},
		"controller-manager":       {CN: "system:kube-controller-manager", Client: true},
		"scheduler":                {CN: "system:kube-scheduler", Client: true},
		"kube-proxy":               {CN: "system:kube-proxy", Client: true},
		"coredns":                  {CN: "system:coredns", Client: true},
		"apf-test":                 {CN: "localk8s-apf-test", O: []string{"localk8s:apf-test"}, Client: true},
	}
	for _, n := range nodes {
		specs["node-client-"+n] = certSpec{CN: "system:node:" + n, O: []string{"system:nodes"}, Client: true}
		specs["kubelet-"+n] = certSpec{CN: n, DNS: []string{n, "localhost"}, IPs: []string{hostIP, "127.0.0.1"}, Server: true}
	}
	for name, s := range specs {
		if err := p.ensure(name, s); err != nil {
			return nil, fmt.Errorf("certificate %s: %w", name, err)
		}
	}
	kc := filepath.Join(dir, "kubeconfigs")
	server := fmt.Sprintf("https://%s:%d", hostIP, apiPort)
	for _, name := range []string{"admin", "controller-manager", "scheduler", "kube-proxy", "coredns"} {
		if err := p.kubeconfig(filepath.Join(kc, name+".kubeconfig"), server, name); err != nil {
			return nil, err
		}
	}
	for _, n := range nodes {
		if err := p.kubeconfig(filepath.Join(kc, n+".kubeconfig"), server, "node-client-"+n); err != nil {
			return nil, err
		}
	}
	return p, nil
}
