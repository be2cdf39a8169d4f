package brpc_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/adminpb"
	"github.com/brpc-go/brpc/examples/greeter/greeterpb"
)

// One *grpc.Server of the application's, on its own listener, serves the
// gateway, the admin service and reflection for both: a plain gRPC client
// lists the connected clients and calls one of them.
func ExampleServer_RegisterAdmin() {
	serverTLS, clientTLS := exampleTLS()
	srv := brpc.NewServer(grpc.NewServer(grpc.Creds(brpc.TransportCredentials())), greeterpb.NewNamerClient)
	lis, err := brpc.ListenQUIC("127.0.0.1:0", serverTLS)
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()

	// Loopback and plaintext here; a gateway others reach needs credentials
	// and an authorizer that checks the caller, and the admin service an
	// interceptor that does.
	relay := srv.Gateway(func(ctx context.Context, clientID, fullMethod string) error { return nil })
	gw := grpc.NewServer(grpc.UnknownServiceHandler(relay))
	brpc.RegisterGatewayReflection(gw, relay)
	srv.RegisterAdmin(gw)
	gwLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go gw.Serve(gwLis)
	defer gw.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	own := grpc.NewServer(grpc.Creds(brpc.TransportCredentials()))
	greeterpb.RegisterNamerServer(own, &namer{name: "ada"})
	defer own.Stop()
	cc, err := brpc.Dial(ctx, "quic://"+lis.Addr().String(), brpc.WithTLSConfig(clientTLS), brpc.WithServer(own),
		brpc.WithMetadata(metadata.Pairs("site", "lab")))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()

	// A plain grpc-go client: no brpc in it.
	plain, err := grpc.NewClient(gwLis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer plain.Close()
	list, err := adminpb.NewAdminClient(plain).ListPeers(ctx, &adminpb.ListPeersRequest{})
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range list.GetPeers() {
		fmt.Println(p.GetId() == cc.ID(), p.GetTransport(), p.GetMetadata()["site"].GetValues())
		r, err := greeterpb.NewNamerClient(plain).GetName(
			metadata.AppendToOutgoingContext(ctx, brpc.GatewayTargetHeader, p.GetId()), &greeterpb.NameRequest{})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(r.GetName())
	}
	// Output:
	// true quic [lab]
	// ada
}
