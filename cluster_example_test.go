package brpc_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/examples/greeter/greeterpb"
	"github.com/brpc-go/brpc/internal/certs"
)

// Two replicas of one cluster: a client connected to r1 is reached from
// r0. In production each replica runs in its own process and the presence
// is shared (brpcetcd); here both share an in-memory one.
func ExampleWithCluster() {
	ca, err := certs.NewCA()
	if err != nil {
		log.Fatal(err)
	}
	presence := brpc.NewMemoryPresence()
	auth := func(_ context.Context, info brpc.AuthInfo) (string, error) { return info.Metadata.Get("name")[0], nil }
	replicas := map[string]*brpc.Server[greeterpb.NamerClient]{}
	var r1Target string
	for _, name := range []string{"r0", "r1"} {
		// The replica endpoint: where the other replicas forward calls for
		// this replica's clients, over mutual TLS.
		repLis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		cert, err := ca.Replica(name) // valid for server and client authentication
		if err != nil {
			log.Fatal(err)
		}
		srv := brpc.NewServer(grpc.NewServer(grpc.Creds(brpc.TransportCredentials())), greeterpb.NewNamerClient,
			brpc.WithAuthenticator(auth),
			brpc.WithCluster(brpc.ClusterConfig{
				Replica:   name,
				Presence:  presence,
				Advertise: repLis.Addr().String(),
				TLS:       &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.Pool},
			}))
		serverTLS, err := ca.ServerTLS()
		if err != nil {
			log.Fatal(err)
		}
		lis, err := brpc.ListenQUIC("127.0.0.1:0", serverTLS)
		if err != nil {
			log.Fatal(err)
		}
		go srv.Serve(lis)
		go srv.ServeReplicas(repLis)
		defer srv.Stop()
		replicas[name] = srv
		if name == "r1" {
			r1Target = "quic://" + lis.Addr().String()
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cgs := grpc.NewServer(grpc.Creds(brpc.TransportCredentials()))
	greeterpb.RegisterNamerServer(cgs, &namer{name: "ada"})
	defer cgs.Stop()
	cc, err := brpc.Dial(ctx, r1Target, brpc.WithTLSConfig(ca.ClientTLS()), brpc.WithServer(cgs),
		brpc.WithMetadata(metadata.Pairs("name", "ada")))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()

	// r0 learns of ada from the presence in a moment.
	r0 := replicas["r0"]
	for len(r0.ClusterPeers()) == 0 {
		time.Sleep(time.Millisecond)
	}
	fmt.Println(r0.ClusterPeers(), len(r0.Peers()), "local")
	ada, err := r0.Client("ada")
	if err != nil {
		log.Fatal(err)
	}
	r, err := ada.GetName(ctx, &greeterpb.NameRequest{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("r0 reached", r.GetName())
	// Output:
	// [{ada r1}] 0 local
	// r0 reached ada
}
