// Command client is the greeter example's brpc client. It dials the server,
// serves its own Namer service to it over the same connection, calls the
// server's Greeter.SayHello a few times and prints the replies: the server
// learns the client's name by calling it back.
//
// Start the server first (it writes the CA certificate the client trusts),
// then, from the repository root:
//
//	go run ./examples/greeter/client -name alice
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/brpc-go/brpc/examples/greeter"
)

func main() {
	greeter.Main("greeter client", run)
}

// run parses args (the command line without the program name), says hello
// to the server and returns. "-help" prints the usage to stdout.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	cfg := greeter.ClientConfig{}
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.StringVar(&cfg.Addr, "addr", greeter.DefaultAddr, "server `address`")
	fs.StringVar(&cfg.CAFile, "ca", greeter.DefaultCAFile, "`file` holding the CA certificate the server wrote")
	fs.StringVar(&cfg.Name, "name", "gopher", "the `name` this client gives when the server asks")
	fs.IntVar(&cfg.Hellos, "n", 3, "how many hellos to send")
	fs.DurationVar(&cfg.Interval, "interval", time.Second, "pause between two hellos")
	if help, err := greeter.ParseFlags(fs, args, stdout); help || err != nil {
		return err
	}
	if cfg.Hellos < 1 {
		return &greeter.UsageError{Err: fmt.Errorf("-n must be at least 1, not %d", cfg.Hellos), Usage: greeter.Usage(fs)}
	}
	return greeter.RunClient(ctx, cfg, stdout)
}
