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
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

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
		fmt.Fprintf(os.Stderr, "greeter server: %v\n%s", uerr.err, uerr.usage)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "greeter server: %v\n", err)
		os.Exit(1)
	}
}

// run parses args (the command line without the program name) and runs the
// server until ctx is done. "-help" prints the usage to stdout.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	cfg := greeter.ServerConfig{}
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.StringVar(&cfg.Addr, "addr", greeter.DefaultAddr, "UDP `address` to listen on")
	fs.StringVar(&cfg.CAOut, "ca-out", greeter.DefaultCAFile, "`file` to write the CA certificate to, for clients to trust")
	fs.DurationVar(&cfg.CallEvery, "every", greeter.DefaultCallEvery, "how often to call every connected client by ID")
	if help, err := parseFlags(fs, args, stdout); help || err != nil {
		return err
	}
	return greeter.RunServer(ctx, cfg, stdout)
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
