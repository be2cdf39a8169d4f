package brpc

import (
	"context"

	"google.golang.org/grpc"

	"github.com/brpc-go/brpc/internal/gateway"
)

// GatewayTargetHeader is the request header that names, in a gateway call, the ID of
// the connected client the call is for.
const GatewayTargetHeader = "brpc-target"

// gatewayReservedPrefix marks request headers only brpc sets: a gateway
// caller's headers with it never reach the client.
const gatewayReservedPrefix = "brpc-"

// GatewayAuthorizer decides whether the caller of a gateway call may call fullMethod
// ("/pkg.Service/Method") on the client with ID clientID. ctx is the incoming call's
// (its peer, TLS state and metadata). A nil error allows the call; otherwise the call
// fails with the error's status (PermissionDenied when the error carries none).
type GatewayAuthorizer func(ctx context.Context, clientID, fullMethod string) error

// Gateway returns a handler for grpc.UnknownServiceHandler on a *grpc.Server of the
// application's choosing (its own listener and credentials). Every call that reaches it
// is relayed, message by message and without decoding, to the client named by the
// call's GatewayTargetHeader, and the client's answer back: all four RPC kinds, request
// headers (less the target header), response headers and trailers, status codes,
// messages and details, deadlines and cancellation. Server reflection is relayed like
// any other call, so `grpcurl -H 'brpc-target: ID' gateway:port list` lists the
// client's services when the client registers reflection.
//
// Errors: no or empty target header (or more than one): codes.InvalidArgument;
// refused by authorize: its status (codes.PermissionDenied when it carries none,
// codes.Internal when authorize panics); a nil authorize refuses every call with
// codes.PermissionDenied; no such client connected: codes.NotFound. authorize runs
// before the client is looked up, so a refused caller does not learn whether the
// client is connected, and the client's handler never runs for a refused call.
// Request headers other than the application's own (pseudo-headers, content-type,
// user-agent, grpc-timeout and the like, and those starting with "brpc-") are not
// relayed; the caller's deadline travels as the relayed call's.
//
// On a replica of a cluster (WithCluster), the gateway reaches the clients of
// every replica: a call for a client on another replica is authorized here and
// forwarded to that replica, as Client(id)'s calls are.
func (s *Server[C]) Gateway(authorize GatewayAuthorizer) grpc.StreamHandler {
	return gateway.Handler(gateway.Config{
		TargetHeader:   GatewayTargetHeader,
		ReservedPrefix: gatewayReservedPrefix,
		Authorize:      authorize,
		Resolve: func(id string) (grpc.ClientConnInterface, error) {
			if s.cluster != nil {
				if ss, ok := s.core.Lookup(id); ok {
					return ss.Conn(), nil
				}
				return s.cluster.Conn(id)
			}
			ss, err := s.core.Client(id)
			if err != nil {
				return nil, err
			}
			return ss.Conn(), nil
		},
	})
}
