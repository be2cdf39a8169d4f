package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/brpc-go/brpc"
)

// ClientsRole is the built-in child role "clients": it dials "n" clients
// (default 1) to "target", trusting the PEM certificate "ca", which serve
// nothing and stay idle. Its ready words are the clients' IDs. It closes
// them when it ends.
func ClientsRole(c *ChildEnv) ([]string, error) {
	n := 1
	if v := c.Arg("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			return nil, fmt.Errorf("n=%q: %v", v, err)
		}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(c.Arg("ca"))) {
		return nil, fmt.Errorf("no CA certificate in the arguments")
	}
	ids := make([]string, 0, n)
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cc, err := brpc.Dial(ctx, c.Arg("target"), brpc.WithTLSConfig(&tls.Config{RootCAs: pool}))
		cancel()
		if err != nil {
			return nil, fmt.Errorf("Dial %d: %v", i, err)
		}
		c.Cleanup(func() { cc.Close() })
		ids = append(ids, cc.ID())
	}
	return ids, nil
}

// StartClientsChild starts a ClientsRole child with n clients of e.
func StartClientsChild(t testing.TB, e *Env, n int) *Child {
	t.Helper()
	return StartChild(t, "clients", map[string]string{"target": e.Target, "ca": string(e.CA.CertPEM()), "n": strconv.Itoa(n)})
}
