package brpc

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
)

// RegisterGatewayReflection registers server reflection (grpc.reflection.v1
// and its older v1alpha, as reflection.Register does) on gs, the
// *grpc.Server whose grpc.UnknownServiceHandler is gateway (what Gateway
// returned), so that the gateway's own services and the clients' can be
// explored through one address:
//
//   - a reflection call with a GatewayTargetHeader is handed to gateway, and
//     so relayed to that client's own reflection service like any gateway
//     call (authorized as any: the authorizer sees its fullMethod,
//     "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
//   - a reflection call without one is answered by gs itself, with the
//     services registered on gs (the admin service of RegisterAdmin,
//     reflection), as reflection.Register would; it passes through gs's
//     interceptors but not through the gateway's authorizer.
//
// So `grpcurl gw:port list` lists the gateway's services and
// `grpcurl -H 'brpc-target: ID' gw:port list` the client's. Call it instead
// of reflection.Register(gs), not with it (gs would refuse the second
// registration), and before gs.Serve. Without it, a gateway whose gs
// registers reflection answers every reflection call itself, since
// registered services take precedence over the unknown-service handler.
// Other services registered on gs answer their calls themselves whether or
// not the call names a client. A nil gateway refuses reflection calls that
// name a client with codes.Unimplemented.
func RegisterGatewayReflection(gs *grpc.Server, gateway grpc.StreamHandler) {
	if gateway == nil {
		gateway = func(any, grpc.ServerStream) error {
			return status.Error(codes.Unimplemented, "brpc: this server relays no gateway calls")
		}
	}
	opts := reflection.ServerOptions{Services: gs}
	reflectionv1.RegisterServerReflectionServer(gs, gatewayReflectionV1{reflection.NewServerV1(opts), gateway})
	reflectionv1alpha.RegisterServerReflectionServer(gs, gatewayReflectionV1alpha{reflection.NewServer(opts), gateway})
}

// namesClient reports whether a call carries the gateway's target header,
// even an empty one: the gateway then answers it, with its own refusal
// when the header is no good.
func namesClient(ss grpc.ServerStream) bool {
	md, _ := metadata.FromIncomingContext(ss.Context())
	return len(md.Get(GatewayTargetHeader)) > 0
}

type gatewayReflectionV1 struct {
	local   reflectionv1.ServerReflectionServer
	gateway grpc.StreamHandler
}

func (g gatewayReflectionV1) ServerReflectionInfo(stream reflectionv1.ServerReflection_ServerReflectionInfoServer) error {
	if namesClient(stream) {
		return g.gateway(nil, stream)
	}
	return g.local.ServerReflectionInfo(stream)
}

type gatewayReflectionV1alpha struct {
	local   reflectionv1alpha.ServerReflectionServer
	gateway grpc.StreamHandler
}

func (g gatewayReflectionV1alpha) ServerReflectionInfo(stream reflectionv1alpha.ServerReflection_ServerReflectionInfoServer) error {
	if namesClient(stream) {
		return g.gateway(nil, stream)
	}
	return g.local.ServerReflectionInfo(stream)
}
