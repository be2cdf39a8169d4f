package main

import (
	"crypto/tls"
	"fmt"
	"os"

	"github.com/brpc-go/brpc/internal/certs"
)

// groupsEnv carries the -tls-groups choice to the child process.
const groupsEnv = "BRPC_BENCH_TLS_GROUPS"

// tlsGroups maps -tls-groups values to the key exchanges every TLS config
// of the run offers (nil: Go's defaults, which put the post-quantum hybrid
// X25519MLKEM768 first).
var tlsGroups = map[string][]tls.CurveID{
	"default": nil,
	"x25519":  {tls.X25519},
}

func setTLSGroups(name string) error {
	if _, ok := tlsGroups[name]; !ok {
		return fmt.Errorf("unknown -tls-groups %q (known: default, x25519)", name)
	}
	return os.Setenv(groupsEnv, name)
}

// keyExchanges returns the key exchanges chosen with -tls-groups.
func keyExchanges() []tls.CurveID { return tlsGroups[os.Getenv(groupsEnv)] }

func serverTLS(ca *certs.CA) (*tls.Config, error) {
	c, err := ca.ServerTLS()
	if err != nil {
		return nil, err
	}
	c.CurvePreferences = keyExchanges()
	return c, nil
}

func clientTLS(ca *certs.CA) *tls.Config {
	c := ca.ClientTLS()
	c.CurvePreferences = keyExchanges()
	return c
}
