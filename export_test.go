package brpc

import (
	"google.golang.org/grpc"

	"github.com/brpc-go/brpc/adminpb"
)

// RegisterAdminWithBuffer is RegisterAdmin with room for n events per
// watch instead of AdminWatchBuffer, so that a test can overrun it with a
// few events.
func RegisterAdminWithBuffer[C any](s *Server[C], r grpc.ServiceRegistrar, n int) {
	adminpb.RegisterAdminServer(r, &adminService{core: s.core, buffer: n})
}

// ClusterTunnels is how many tunnels from other replicas to s's clients
// are open now.
func ClusterTunnels[C any](s *Server[C]) int { return s.cluster.Tunnels() }
