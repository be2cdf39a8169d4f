package brpc_test

import (
	"context"
	"log"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/examples/greeter/greeterpb"
)

// An authorizer that admits callers by a bearer token and names, for the
// client, the operator the token belongs to.
func ExampleSetGatewayCaller() {
	operators := map[string]string{"s3cr3t": "ops:alice"} // token -> operator
	authorize := func(ctx context.Context, clientID, fullMethod string) error {
		md, _ := metadata.FromIncomingContext(ctx)
		auth := md.Get("authorization")
		if len(auth) != 1 {
			return status.Error(codes.Unauthenticated, "no token")
		}
		who, ok := operators[strings.TrimPrefix(auth[0], "Bearer ")]
		if !ok {
			return status.Error(codes.PermissionDenied, "unknown token")
		}
		brpc.SetGatewayCaller(ctx, who)
		return nil
	}
	srv := brpc.NewServer(grpc.NewServer(), greeterpb.NewNamerClient)
	gw := grpc.NewServer(grpc.UnknownServiceHandler(srv.Gateway(authorize)))
	_ = gw // gw.Serve(a listener of its own)
}

// loggingNamer is a client's Namer service that notes who asked through
// the server's gateway.
type loggingNamer struct {
	greeterpb.UnimplementedNamerServer
}

func (loggingNamer) GetName(ctx context.Context, _ *greeterpb.NameRequest) (*greeterpb.NameReply, error) {
	if gc, ok := brpc.GatewayCallFromContext(ctx); ok {
		log.Printf("GetName through the gateway for %q from %s", gc.Caller, gc.CallerAddr)
	}
	return &greeterpb.NameReply{Name: "device-1"}, nil
}

// A client's handler learns whether the server relayed the call from its
// gateway, and for whom.
func ExampleGatewayCallFromContext() {
	own := grpc.NewServer()
	greeterpb.RegisterNamerServer(own, loggingNamer{})
	_ = brpc.WithServer(own) // brpc.Dial(ctx, target, brpc.WithTLSConfig(...), brpc.WithServer(own))
}
