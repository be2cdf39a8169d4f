package brpc

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc/internal/gateway"
	"github.com/brpc-go/brpc/internal/grpcglue"
)

// GatewayTargetHeader is the request header that names, in a gateway call, the ID of
// the connected client the call is for.
const GatewayTargetHeader = "brpc-target"

// GatewayCallerHeader is the request header the gateway adds to every call
// it relays to a client: the principal the call was admitted for (see
// GatewayCallFromContext, which reads it). Its value is the principal with
// every byte outside printable ASCII, and '%', written as %XX; an
// anonymous caller's is empty.
const GatewayCallerHeader = "brpc-gateway-caller"

// GatewayCallerAddrHeader is the request header the gateway adds to every
// call it relays to a client: the caller's network address (host:port) as
// the gateway's *grpc.Server saw it.
const GatewayCallerAddrHeader = "brpc-gateway-caller-addr"

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
// Registered services take precedence over this handler: reflection
// registered on the gateway's *grpc.Server with reflection.Register would
// answer the clients' reflection calls too. RegisterGatewayReflection
// registers reflection that relays a call with the target header and
// answers one without it with the gateway server's own services (such as
// the admin service of RegisterAdmin).
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
// Every relayed call carries GatewayCallerHeader and GatewayCallerAddrHeader,
// set by the gateway (a caller's own are dropped like any "brpc-" header):
// the client's handler learns from GatewayCallFromContext that the call came
// through the gateway, for whom and from where. The principal is the one
// authorize named with SetGatewayCaller, or else the one the caller's
// verified TLS certificate names (its SPIFFE ID, else its subject common
// name), or else none.
//
// Relayed calls in flight are bounded per client and in all
// (WithGatewayLimits); a call beyond either bound fails with
// codes.ResourceExhausted after authorize has admitted it and before the
// client is called. Several handlers of one Server share the bounds.
//
// A call is relayed as one bidirectional stream to the client whatever its
// kind, unless WithGatewayServices describes its method: then a unary
// method's call goes to the client as a unary call, which costs the server
// less.
//
// On a replica of a cluster (WithCluster), the gateway reaches the clients of
// every replica: a call for a client on another replica is authorized here and
// forwarded to that replica, as Client(id)'s calls are.
func (s *Server[C]) Gateway(authorize GatewayAuthorizer) grpc.StreamHandler {
	return gateway.Handler(gateway.Config{
		TargetHeader:     GatewayTargetHeader,
		ReservedPrefix:   gatewayReservedPrefix,
		CallerHeader:     GatewayCallerHeader,
		CallerAddrHeader: GatewayCallerAddrHeader,
		Limiter:          s.gwLimit,
		Kinds:            s.gwKinds,
		Authorize:        authorize,
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

// SetGatewayCaller names, from inside a GatewayAuthorizer, the principal the
// call is admitted for: the client's handler sees it as GatewayCall.Caller
// instead of the one the caller's certificate names. Call it with the ctx
// the authorizer was given, before the authorizer returns (the last call
// wins; "" makes the caller anonymous); it reports whether it took effect,
// which it does not with any other ctx or once the authorizer has returned.
// A principal is any string: it is carried in GatewayCallerHeader, escaped
// where a header needs it.
func SetGatewayCaller(ctx context.Context, principal string) bool {
	return gateway.SetCaller(ctx, principal)
}

// GatewayCall describes, to a client's handler, a call a server's gateway
// relayed to it.
type GatewayCall struct {
	// Caller is the principal the gateway admitted the call for: the one
	// the authorizer named with SetGatewayCaller, else the SPIFFE ID or
	// subject common name of the caller's verified TLS certificate, else ""
	// (an anonymous caller).
	Caller string
	// CallerAddr is the caller's network address (host:port) as the
	// gateway saw it. Like any address it is not an identity.
	CallerAddr string
}

// GatewayCallFromContext reports, in a client's handler of a reverse call,
// whether the server's gateway relayed the call and for whom. It reads the
// headers the gateway sets (GatewayCallerHeader, GatewayCallerAddrHeader),
// and trusts them only where the server alone can have set them: on a call
// that arrived from the server over the client's brpc session. Everywhere
// else it reports false: in a server's handlers (a client may send such
// headers with its own calls), in handlers of calls that did not arrive on
// a brpc session, and for the server's own calls through Client or
// ClientFromContext stubs, which drop these headers from the outgoing
// metadata so that a handler passing its incoming metadata on cannot make
// a call look relayed. (An interceptor added with WithGRPCDialOptions runs
// after that and is trusted like the server's code.)
func GatewayCallFromContext(ctx context.Context) (GatewayCall, bool) {
	info := grpcglue.InfoFromContext(ctx)
	if info == nil || info.Owner != nil {
		// Not a brpc session's call, or a server's side of one (a session
		// has an owner on the server only).
		return GatewayCall{}, false
	}
	caller := metadata.ValueFromIncomingContext(ctx, GatewayCallerHeader)
	if len(caller) != 1 {
		return GatewayCall{}, false
	}
	var addr string
	if a := metadata.ValueFromIncomingContext(ctx, GatewayCallerAddrHeader); len(a) == 1 {
		addr = a[0]
	}
	return GatewayCall{Caller: gateway.DecodeValue(caller[0]), CallerAddr: addr}, true
}

// reverseConn is the connection the server's stubs call a client on. It
// drops the gateway's caller headers from the calls' outgoing metadata:
// only the gateway's relay, which calls the session's connection itself,
// sets them, so that a handler that passes its incoming metadata on to a
// reverse call cannot make the client believe a gateway admitted it.
type reverseConn struct{ grpc.ClientConnInterface }

func (c reverseConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.ClientConnInterface.Invoke(withoutCallerHeaders(ctx), method, args, reply, opts...)
}

func (c reverseConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.ClientConnInterface.NewStream(withoutCallerHeaders(ctx), desc, method, opts...)
}

// withoutCallerHeaders is ctx without the gateway's caller headers in its
// outgoing metadata. A call that has none, as nearly all do, costs two
// lookups and no copy.
func withoutCallerHeaders(ctx context.Context) context.Context {
	if len(metadata.ValueFromOutgoingContext(ctx, GatewayCallerHeader)) == 0 &&
		len(metadata.ValueFromOutgoingContext(ctx, GatewayCallerAddrHeader)) == 0 {
		return ctx
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	delete(md, GatewayCallerHeader)
	delete(md, GatewayCallerAddrHeader)
	return metadata.NewOutgoingContext(ctx, md)
}
