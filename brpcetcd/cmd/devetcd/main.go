// Command devetcd runs an etcd server, one member on loopback, for trying
// a brpc cluster on one machine that has nothing but Go:
//
//	cd brpcetcd && go run ./cmd/devetcd
//
// It serves etcd's client API at http://127.0.0.1:2379 (-listen) without
// TLS or authentication, so it refuses any address but loopback, and keeps
// its data in a temporary directory removed when it stops (or in
// -data-dir). It is etcd's own server (go.etcd.io/etcd/server/v3/embed),
// not one to run a fleet on: that wants an etcd cluster of three or five
// members of its own, such as Debian's etcd-server package.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run runs devetcd until ctx ends and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("devetcd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:2379", "serve etcd's client API at this loopback host:port")
	peer := fs.String("peer", "127.0.0.1:2380", "the member's peer address (loopback host:port), which a single member only listens on")
	dataDir := fs.String("data-dir", "", "keep etcd's data in this directory, kept after a stop; empty: a temporary directory, removed")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "devetcd: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	for _, a := range []struct{ flag, addr string }{{"-listen", *listen}, {"-peer", *peer}} {
		if err := loopback(a.addr); err != nil {
			fmt.Fprintf(stderr, "devetcd: %s %s: %v\n", a.flag, a.addr, err)
			return 2
		}
	}
	if err := serve(ctx, *listen, *peer, *dataDir, stdout); err != nil {
		fmt.Fprintf(stderr, "devetcd: %v\n", err)
		return 1
	}
	return 0
}

// loopback refuses an address that is not host:port on loopback: the etcd
// it serves lets anyone who reaches it read and write every key.
func loopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return errors.New("want a loopback IP address, such as 127.0.0.1: this etcd has no TLS and no authentication")
	}
	return nil
}

// serve runs an embedded etcd until ctx ends.
func serve(ctx context.Context, listen, peer, dataDir string, stdout io.Writer) error {
	if dataDir == "" {
		dir, err := os.MkdirTemp("", "devetcd-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		dataDir = dir
	}
	cfg := embed.NewConfig()
	cfg.Name = "devetcd"
	cfg.Dir = dataDir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	client := url.URL{Scheme: "http", Host: listen}
	peerURL := url.URL{Scheme: "http", Host: peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peerURL}, []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// Every claim of a client is a new revision: compacting keeps the
	// history of a long session from growing without end.
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = "1h"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("starting etcd: %w", err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return err
	case <-time.After(time.Minute):
		return errors.New("etcd was not ready within a minute")
	case <-ctx.Done():
		return nil
	}
	fmt.Fprintf(stdout, "devetcd: etcd serving at %s, data in %s; interrupt to stop\n", e.Clients[0].Addr(), dataDir)
	select {
	case <-ctx.Done():
		fmt.Fprintln(stdout, "devetcd: stopping")
		return nil
	case err := <-e.Err():
		return err
	}
}
