package greeter

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
)

// UsageError is a command-line mistake of the example programs: main prints
// it with the usage and exits with status 2.
type UsageError struct {
	Err   error
	Usage string
}

// Error reports the mistake itself; Usage holds the help text.
func (e *UsageError) Error() string { return e.Err.Error() }

// ParseFlags parses args into fs. It reports help when -help printed the
// usage to stdout; a mistake comes back as a *UsageError.
func ParseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) (help bool, err error) {
	fs.SetOutput(io.Discard) // main reports mistakes; -help is handled below
	err = fs.Parse(args)
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, flag.ErrHelp):
		io.WriteString(stdout, Usage(fs))
		return true, nil
	default:
		return false, &UsageError{Err: err, Usage: Usage(fs)}
	}
}

// Usage describes an example program and its flags.
func Usage(fs *flag.FlagSet) string {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: go run ./examples/greeter/%s [flags]\n\nflags:\n", fs.Name())
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	return b.String()
}

// Main runs an example program: run gets a context that ends on SIGINT or
// SIGTERM, the command line without the program name and stdout. A
// *UsageError exits with status 2 after the usage, other errors with 1.
func Main(name string, run func(ctx context.Context, args []string, stdout io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	var uerr *UsageError
	switch {
	case err == nil:
	case errors.As(err, &uerr):
		fmt.Fprintf(os.Stderr, "%s: %v\n%s", name, uerr.Err, uerr.Usage)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
