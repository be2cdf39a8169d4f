// Package integrationtests holds brpc's scenario suites: faults on the
// path, hostile peers, limits, idle cost, slow readers, restarts and a
// soak. They run real QUIC and TCP connections on loopback through the
// shared harness in internal/testenv.
package integrationtests

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/brpc-go/brpc/internal/testenv"
)

// childRoles are the child processes this package's tests start, besides
// testenv's built-in ones.
var childRoles = map[string]testenv.Role{
	"streaming-client":   streamingClientRole,
	attackRole:           attackServerRole,
	grpcFloodRole:        grpcFloodServerRole,
	raisedHelloRole:      raisedHelloServerRole,
	gatewayRole:          gatewayServerRole,
	gatewayDescribedRole: gatewayDescribedServerRole,
	usedClientsRole:      usedClientsRoleFn,
}

func TestMain(m *testing.M) {
	testenv.RunChild(childRoles)
	goleak.VerifyTestMain(m)
}
