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
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/brpc-go/brpc/examples/greeter"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout)
	var uerr *usageError
	switch {
	case err == nil:
	case errors.As(err, &uerr):
		fmt.Fprintf(os.Stderr, "greeter client: %v\n%s", uerr.err, uerr.usage)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "greeter client: %v\n", err)
		os.Exit(1)
	}
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
	if help, err := parseFlags(fs, args, stdout); help || err != nil {
		return err
	}
	if cfg.Hellos < 1 {
		return &usageError{err: fmt.Errorf("-n must be at least 1, not %d", cfg.Hellos), usage: usage(fs)}
	}
	return greeter.RunClient(ctx, cfg, stdout)
}

// usageError is a command-line mistake: main prints it with the usage and
// exits with status 2.
type usageError struct {
	err   error
	usage string
}

func (e *usageError) Error() string { return e.err.Error() }

// parseFlags parses args into fs. It reports help when -help printed the
// usage to stdout; a mistake comes back as a *usageError.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) (help bool, err error) {
	fs.SetOutput(io.Discard) // main reports mistakes; -help is handled below
	err = fs.Parse(args)
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, flag.ErrHelp):
		io.WriteString(stdout, usage(fs))
		return true, nil
	default:
		return false, &usageError{err: err, usage: usage(fs)}
	}
}

// usage describes the command and its flags.
func usage(fs *flag.FlagSet) string {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: go run ./examples/greeter/%s [flags]\n\nflags:\n", fs.Name())
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	return b.String()
}
