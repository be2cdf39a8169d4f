package brpccmd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files of a certificates directory (echo-server -certs).
const (
	// caKeyFile holds the CA's certificate and its private key: one file,
	// so that it appears whole or not at all.
	caKeyFile = "ca-key.pem"
	// caCertFile holds the CA's certificate alone, for clients to trust.
	caCertFile = "ca.pem"
)

// caLifetime is how long a CA made in a certificates directory is valid:
// long enough to try a cluster over days, short enough for a key kept in
// a plain file.
const caLifetime = 30 * 24 * time.Hour

// dirCA is the CA of a certificates directory: every echo-server started
// with the same directory issues its certificates from it, so that the
// replicas of a cluster trust each other and a client trusts them all.
type dirCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	dir  string
}

// openCertsDir reads the CA kept in dir, making the directory and the CA
// first if they do not exist yet. Servers started at the same moment with
// the same directory end up with the same CA: the CA file is written
// under a temporary name and linked into place, and whoever links second
// reads the first one's.
func openCertsDir(dir string) (*dirCA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("-certs: %w", err)
	}
	path := filepath.Join(dir, caKeyFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		data, err = createCA(dir, path)
	}
	if err != nil {
		return nil, fmt.Errorf("-certs: %w", err)
	}
	ca, err := parseCA(data)
	if err != nil {
		return nil, fmt.Errorf("-certs: %s: %w", path, err)
	}
	ca.dir = dir
	if time.Now().After(ca.cert.NotAfter) {
		return nil, fmt.Errorf("-certs: the CA in %s expired on %s; remove %s and %s to make a new one",
			dir, ca.cert.NotAfter.Format(time.DateOnly), path, filepath.Join(dir, caCertFile))
	}
	// Written again by every server, always with the same content: a
	// rename replaces it whole, so a client never reads half of it.
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
	if err := writeFileAtomic(filepath.Join(dir, caCertFile), caPEM, 0o644); err != nil {
		return nil, fmt.Errorf("-certs: %w", err)
	}
	return ca, nil
}

// createCA makes a CA and links its file into place at path, unless
// another server did first: then it returns that one.
func createCA(dir, path string) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "brpc echo-server CA"},
		NotBefore:             now.Add(-time.Hour), // for clocks that run behind
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	data := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})...)
	tmp, err := os.CreateTemp(dir, ".ca-key-*.pem")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	switch err := os.Link(tmp.Name(), path); {
	case err == nil:
		return data, nil
	case errors.Is(err, fs.ErrExist):
		return os.ReadFile(path)
	default:
		return nil, err
	}
}

func parseCA(data []byte) (*dirCA, error) {
	var ca dirCA
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		switch block.Type {
		case "CERTIFICATE":
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, err
			}
			ca.cert = cert
		case "EC PRIVATE KEY":
			key, err := x509.ParseECPrivateKey(block.Bytes)
			if err != nil {
				return nil, err
			}
			ca.key = key
		}
	}
	if ca.cert == nil || ca.key == nil {
		return nil, errors.New("want a CERTIFICATE and an EC PRIVATE KEY")
	}
	if !ca.cert.IsCA {
		return nil, errors.New("the certificate is not a CA's")
	}
	ca.pool = x509.NewCertPool()
	ca.pool.AddCert(ca.cert)
	return &ca, nil
}

// issue makes a certificate for localhost, 127.0.0.1, ::1 and names (host
// names or IP addresses), valid for both server and client
// authentication: a replica serves its endpoint and dials the others'
// with the same certificate. It is valid as long as the CA.
func (ca *dirCA) issue(names ...string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		NotBefore:   time.Now().Add(-time.Hour),
		NotAfter:    ca.cert.NotAfter,
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, n := range names {
		if n == "" {
			continue
		}
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// writeFileAtomic writes data to path under a temporary name and renames
// it into place.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
