package brpcetcd_test

import (
	"log"
	"time"

	"github.com/brpc-go/brpc/brpcetcd"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// A presence for the replicas of one cluster, on an etcd client whose
// reconnect backoff is capped so that the presence comes back soon after
// etcd does.
func ExampleNew() {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"127.0.0.1:2379"},
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		})},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	presence, err := brpcetcd.New(cli, brpcetcd.WithPrefix("/fleet-a"), brpcetcd.WithTTL(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	// presence is the brpc.Presence of each replica's server; its stats
	// are there for metrics.
	_ = presence.Stats()
}
