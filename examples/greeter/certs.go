package greeter

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net"
	"time"
)

// throwawayCA is a certificate authority that lives in memory as long as the
// server runs: clients trust it through the certificate file the server
// writes. A real deployment brings its own certificates. The example carries
// this code itself, rather than importing it from brpc, so that it can be
// copied out of brpc's module; cmd/brpc carries the same few lines for the
// same reason.
type throwawayCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newThrowawayCA() (*throwawayCA, error) {
	cert, key, err := issue(&x509.Certificate{
		Subject:               pkix.Name{CommonName: "brpc greeter example CA"},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("making a CA: %w", err)
	}
	return &throwawayCA{cert: cert, key: key}, nil
}

// serverCert issues a certificate for localhost, 127.0.0.1 and ::1 plus
// names (host names or IP addresses).
func (ca *throwawayCA) serverCert(names ...string) (tls.Certificate, error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	leaf, key, err := issue(tmpl, ca.cert, ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("making the server certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// certPEM encodes the CA's certificate for clients in other processes.
func (ca *throwawayCA) certPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

// issue makes a key pair and a certificate for it from tmpl, valid for a
// day, signed by parent's key or, when parent is nil, by its own. The
// certificate's serial number is random (x509.CreateCertificate picks one
// when tmpl has none).
func issue(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	// An hour of slack for clocks that run behind.
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}
