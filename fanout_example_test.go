package brpc_test

import (
	"context"
	"fmt"
	"log"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/examples/greeter/greeterpb"
)

// The server asks every connected client of one region for its name, a
// few at a time, each within its own deadline.
func ExampleServer_FanOut() {
	serverTLS, clientTLS := exampleTLS()
	srv := brpc.NewServer(grpc.NewServer(grpc.Creds(brpc.TransportCredentials())), greeterpb.NewNamerClient)
	lis, err := brpc.ListenTCP("127.0.0.1:0", serverTLS)
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range []struct{ name, region string }{{"ada", "eu"}, {"grace", "us"}, {"linus", "eu"}} {
		cgs := grpc.NewServer(grpc.Creds(brpc.TransportCredentials()))
		greeterpb.RegisterNamerServer(cgs, &namer{name: c.name})
		defer cgs.Stop()
		cc, err := brpc.Dial(ctx, "tcp://"+lis.Addr().String(), brpc.WithTLSConfig(clientTLS),
			brpc.WithServer(cgs), brpc.WithMetadata(metadata.Pairs("region", c.region)))
		if err != nil {
			log.Fatal(err)
		}
		defer cc.Close()
	}

	var (
		mu    sync.Mutex
		names []string
	)
	results, err := srv.FanOut(ctx, brpc.FanOutOptions{
		Concurrency:      8,
		PerClientTimeout: 2 * time.Second,
		Filter:           func(p brpc.Peer) bool { return p.Metadata.Get("region")[0] == "eu" },
	}, func(ctx context.Context, c greeterpb.NamerClient, _ brpc.Peer) error {
		r, err := c.GetName(ctx, &greeterpb.NameRequest{})
		if err != nil {
			return err
		}
		mu.Lock()
		names = append(names, r.GetName())
		mu.Unlock()
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range results {
		if r.Err != nil {
			fmt.Println(r.Peer.ID, "failed:", r.Err)
		}
	}
	sort.Strings(names)
	fmt.Println(len(results), names)
	// Output: 2 [ada linus]
}
