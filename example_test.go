package brpc_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/examples/greeter/greeterpb"
	"github.com/brpc-go/brpc/internal/certs"
)

// exampleTLS stands for loading your own certificates: it returns a server
// config and a client config that trusts it.
func exampleTLS() (server, client *tls.Config) {
	ca, err := certs.NewCA()
	if err != nil {
		log.Fatal(err)
	}
	server, err = ca.ServerTLS()
	if err != nil {
		log.Fatal(err)
	}
	return server, ca.ClientTLS()
}

// greeter is the server's service. Its handler calls the calling client back.
type greeter struct {
	greeterpb.UnimplementedGreeterServer
	srv *brpc.Server[greeterpb.NamerClient]
}

func (g *greeter) SayHello(ctx context.Context, req *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	namer, err := g.srv.ClientFromContext(ctx) // the caller, from its connection
	if err != nil {
		return nil, err
	}
	name, err := namer.GetName(ctx, &greeterpb.NameRequest{})
	if err != nil {
		return nil, err
	}
	return &greeterpb.HelloReply{Message: req.GetGreeting() + ", " + name.GetName()}, nil
}

// namer is the client's service, which the server calls.
type namer struct {
	greeterpb.UnimplementedNamerServer
	name string
}

func (n *namer) GetName(context.Context, *greeterpb.NameRequest) (*greeterpb.NameReply, error) {
	return &greeterpb.NameReply{Name: n.name}, nil
}

// A server whose handler calls its caller back, and a client that serves
// the service the server calls.
func Example() {
	serverTLS, clientTLS := exampleTLS()

	// Server: the application's own *grpc.Server, wrapped, with the limits
	// docs/security.md recommends on what one client's calls can make it
	// hold.
	gs := grpc.NewServer(
		grpc.Creds(brpc.TransportCredentials()),
		grpc.MaxConcurrentStreams(16),
		grpc.InitialWindowSize(256<<10),
		grpc.InitialConnWindowSize(4<<20),
	)
	g := &greeter{}
	g.srv = brpc.NewServer(gs, greeterpb.NewNamerClient)
	greeterpb.RegisterGreeterServer(gs, g)
	lis, err := brpc.ListenQUIC("127.0.0.1:0", serverTLS)
	if err != nil {
		log.Fatal(err)
	}
	go g.srv.Serve(lis)
	defer g.srv.Stop()

	// Client: its own *grpc.Server holds the services the server may call.
	cgs := grpc.NewServer(grpc.Creds(brpc.TransportCredentials()))
	greeterpb.RegisterNamerServer(cgs, &namer{name: "gopher"})
	defer cgs.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := brpc.Dial(ctx, "quic://"+lis.Addr().String(), brpc.WithTLSConfig(clientTLS), brpc.WithServer(cgs))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()

	reply, err := greeterpb.NewGreeterClient(cc).SayHello(ctx, &greeterpb.HelloRequest{Greeting: "Hello"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(reply.GetMessage())
	// Output: Hello, gopher
}

// The server reaches any connected client by ID, for example from a
// background job or an admin API.
func ExampleServer_Client() {
	serverTLS, clientTLS := exampleTLS()
	srv := brpc.NewServer(grpc.NewServer(
		grpc.Creds(brpc.TransportCredentials()),
		grpc.MaxConcurrentStreams(16),
		grpc.InitialWindowSize(256<<10),
		grpc.InitialConnWindowSize(4<<20),
	), greeterpb.NewNamerClient)
	lis, err := brpc.ListenQUIC("127.0.0.1:0", serverTLS)
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range []string{"ada", "grace"} {
		cgs := grpc.NewServer(grpc.Creds(brpc.TransportCredentials()))
		greeterpb.RegisterNamerServer(cgs, &namer{name: name})
		defer cgs.Stop()
		cc, err := brpc.Dial(ctx, "quic://"+lis.Addr().String(), brpc.WithTLSConfig(clientTLS), brpc.WithServer(cgs))
		if err != nil {
			log.Fatal(err)
		}
		defer cc.Close()
	}

	names := map[string]bool{}
	for _, p := range srv.Peers() {
		namer, err := srv.Client(p.ID)
		if err != nil {
			log.Fatal(err)
		}
		r, err := namer.GetName(ctx, &greeterpb.NameRequest{})
		if err != nil {
			log.Fatal(err)
		}
		names[r.GetName()] = true
	}
	fmt.Println(len(names), "clients:", names["ada"], names["grace"])

	_, err = srv.Client("no-such-id")
	fmt.Println(status.Code(err))
	// Output:
	// 2 clients: true true
	// NotFound
}

// An Authenticator decides who a client is from what its connection carries:
// the hello metadata and the verified TLS state.
func ExampleWithAuthenticator() {
	serverTLS, clientTLS := exampleTLS()
	tokens := map[string]string{"secret-1": "device-1"}
	auth := func(ctx context.Context, info brpc.AuthInfo) (string, error) {
		tok := info.Metadata.Get("token")
		if len(tok) == 1 {
			if id, ok := tokens[tok[0]]; ok {
				return id, nil
			}
		}
		return "", status.Error(codes.Unauthenticated, "unknown token")
	}
	srv := brpc.NewServer(grpc.NewServer(
		grpc.Creds(brpc.TransportCredentials()),
		grpc.MaxConcurrentStreams(16),
		grpc.InitialWindowSize(256<<10),
		grpc.InitialConnWindowSize(4<<20),
	), greeterpb.NewNamerClient, brpc.WithAuthenticator(auth))
	lis, err := brpc.ListenQUIC("127.0.0.1:0", serverTLS)
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	target := "quic://" + lis.Addr().String()
	cc, err := brpc.Dial(ctx, target, brpc.WithTLSConfig(clientTLS), brpc.WithMetadata(metadata.Pairs("token", "secret-1")))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	fmt.Println("admitted as", cc.ID())

	_, err = brpc.Dial(ctx, target, brpc.WithTLSConfig(clientTLS), brpc.WithMetadata(metadata.Pairs("token", "guess")))
	fmt.Println("refused:", status.Code(err))
	// Output:
	// admitted as device-1
	// refused: Unauthenticated
}

// PeerFromContext tells a handler which client is calling; the answer comes
// from the connection.
func ExamplePeerFromContext() {
	handler := func(ctx context.Context) {
		if p, ok := brpc.PeerFromContext(ctx); ok {
			fmt.Println("called by", p.ID, "over", p.Transport)
		}
	}
	_ = handler
}

// A target may list several replicas of a server: the client connects to
// one of them and, when that one stops, moves to another by itself.
func ExampleDial_severalEndpoints() {
	serverTLS, clientTLS := exampleTLS()
	var (
		replicas []*brpc.Server[greeterpb.NamerClient]
		addrs    []string
	)
	for range 2 {
		srv := brpc.NewServer(grpc.NewServer(grpc.Creds(brpc.TransportCredentials())), greeterpb.NewNamerClient)
		lis, err := brpc.ListenTCP("127.0.0.1:0", serverTLS)
		if err != nil {
			log.Fatal(err)
		}
		go srv.Serve(lis)
		defer srv.Stop()
		replicas = append(replicas, srv)
		addrs = append(addrs, lis.Addr().String())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := brpc.Dial(ctx, "tcp://"+strings.Join(addrs, ","), brpc.WithTLSConfig(clientTLS))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	holder := func() int {
		for i, srv := range replicas {
			if _, err := srv.Client(cc.ID()); err == nil {
				return i
			}
		}
		return -1
	}
	first := holder()
	replicas[first].GracefulStop()
	for holder() != 1-first {
		if !cc.WaitForStateChange(ctx, cc.GetState()) {
			log.Fatal("the client did not reconnect")
		}
	}
	fmt.Println("moved to the other replica")
	// Output: moved to the other replica
}
