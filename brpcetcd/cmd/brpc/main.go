// Command brpc is brpc's command-line tool (github.com/brpc-go/brpc/cmd/brpc)
// built with brpcetcd: its echo-server can run as a replica of a cluster
// whose presence etcd keeps. brpc's own module never requires etcd, so
// this build lives in brpcetcd's module. From brpc's repository:
//
//	cd brpcetcd
//	go run ./cmd/devetcd &    # an etcd on 127.0.0.1:2379 to try it with
//	go run ./cmd/brpc echo-server -replica a -etcd 127.0.0.1:2379 -certs /tmp/brpc-certs
//
// Every command and flag of the brpc command is here, as "brpc help" lists
// them; brpc's README, "Running a cluster", has three replicas and their
// clients.
package main

import (
	"io"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/brpcetcd"
	"github.com/brpc-go/brpc/cmd/brpc/brpccmd"
)

func main() {
	os.Exit(brpccmd.Run(os.Args[1:], os.Stdout, os.Stderr, brpccmd.Extensions{Presence: openEtcd}))
}

// openEtcd opens the presence of echo-server -replica in the etcd at
// endpoints; closing what it returns closes the etcd client.
func openEtcd(endpoints []string, ttl time.Duration) (brpc.Presence, io.Closer, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: endpoints,
		// echo-server reports the presence going down and coming back;
		// the client's own log would repeat it, as JSON.
		Logger: zap.NewNop(),
		// grpc's reconnect backoff grows to 120 s: capped, a replica finds
		// an etcd that comes back within a second.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		})},
	})
	if err != nil {
		return nil, nil, err
	}
	p, err := brpcetcd.New(cli, brpcetcd.WithTTL(ttl))
	if err != nil {
		cli.Close()
		return nil, nil, err
	}
	return p, cli, nil
}
