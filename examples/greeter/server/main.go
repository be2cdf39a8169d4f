// Command server is the greeter example's brpc server. It serves Greeter to
// its clients and calls back the Namer service each client serves: inside
// SayHello to learn the caller's name, and every few seconds, on its own, to
// show that it can reach any connected client by ID.
//
// Run it from the repository root, then start clients in other terminals:
//
//	go run ./examples/greeter/server
//	go run ./examples/greeter/client -name alice
//
// It writes the certificate of its throwaway CA to -ca-out, which the client
// reads with -ca. Stop it with Ctrl-C (SIGINT) or SIGTERM: it stops
// gracefully, letting calls in flight finish.
package main

import (
	"context"
	"flag"
	"io"

	"github.com/brpc-go/brpc/examples/greeter"
)

func main() {
	greeter.Main("greeter server", run)
}

// run parses args (the command line without the program name) and runs the
// server until ctx is done. "-help" prints the usage to stdout.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	cfg := greeter.ServerConfig{}
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.StringVar(&cfg.Addr, "addr", greeter.DefaultAddr, "UDP `address` to listen on")
	fs.StringVar(&cfg.CAOut, "ca-out", greeter.DefaultCAFile, "`file` to write the CA certificate to, for clients to trust")
	fs.DurationVar(&cfg.CallEvery, "every", greeter.DefaultCallEvery, "how often to call every connected client by ID")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://`address`/metrics, e.g. 127.0.0.1:9090")
	if help, err := greeter.ParseFlags(fs, args, stdout); help || err != nil {
		return err
	}
	return greeter.RunServer(ctx, cfg, stdout)
}
