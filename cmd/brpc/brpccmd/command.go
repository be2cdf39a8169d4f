// Package brpccmd is the brpc command (cmd/brpc): its subcommands, flags
// and output, in a package of its own so that another build of the
// command can add to it what brpc's module must not depend on, such as
// the etcd presence of github.com/brpc-go/brpc/brpcetcd. Like brpc's
// examples, it uses brpc's public API only.
package brpccmd

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/brpc-go/brpc"
)

// Extensions are what a build of the brpc command adds to what brpc's own
// module can offer. The zero value is the command of cmd/brpc.
type Extensions struct {
	// Presence opens the presence that echo-server -replica joins. Nil:
	// echo-server refuses -etcd, naming the build that has it.
	Presence PresenceFunc
}

// PresenceFunc opens a cluster's presence in etcd: endpoints are
// echo-server's -etcd, ttl its -etcd-ttl (a whole number of seconds). The
// io.Closer releases what it opened, such as the etcd client; echo-server
// closes it once the server has left the cluster.
type PresenceFunc func(endpoints []string, ttl time.Duration) (brpc.Presence, io.Closer, error)

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1 // the command ran and failed
	exitUsage = 2 // the command line is wrong
)

// command is a subcommand of brpc.
type command struct {
	name    string
	summary string
	// args describes the positional arguments after the flags; empty:
	// the command takes none. run reads them from its flag set.
	args string
	// details, if set, explains the command further in its usage.
	details string
	// flags returns the command's flag set; run then does the work once the
	// flags are parsed. A *badUsage error from run is a command-line mistake
	// that flag parsing could not catch.
	flags func(ext Extensions) (fs *flag.FlagSet, run func(stdout io.Writer) error)
}

// badUsage is a command-line mistake found after the flags were parsed, such
// as a value out of range.
type badUsage struct{ msg string }

func (e *badUsage) Error() string { return e.msg }

// badInput is a mistake in what the command was given (an unknown method,
// malformed JSON) that the usage would not help with: it exits with
// exitUsage and its message alone.
type badInput struct{ msg string }

func (e *badInput) Error() string { return e.msg }

// commands lists brpc's subcommands in the order usage shows them.
func commands() []command {
	return []command{
		{
			name:    "demo",
			summary: "run a server and a few clients in one process and show calls in both directions",
			flags:   demoFlags,
		},
		{
			name:    "echo-server",
			summary: "serve an echo service on QUIC and TCP, for echo-client to check connectivity",
			details: echoServerDetails,
			flags:   echoServerFlags,
		},
		{
			name:    "echo-client",
			summary: "connect to an echo-server and report the transport and latency in both directions",
			flags:   echoClientFlags,
		},
		{
			name:    "peers",
			summary: "list the clients connected to a server (its admin service) or to every replica of its cluster, or watch them come and go",
			flags:   peersFlags,
		},
		{
			name:    "call",
			summary: "call a method of a connected client through the server's gateway, with JSON",
			args:    "<client-id> <method> [<json>]",
			details: callDetails,
			flags:   callFlags,
		},
	}
}

// Run runs the brpc command with args (the command line without the
// program name), printing to stdout and stderr, with what ext adds, and
// returns the exit status: 0 when the command succeeded, 1 when it ran and
// failed, 2 for a mistake in the command line.
func Run(args []string, stdout, stderr io.Writer, ext Extensions) int {
	fs := flag.NewFlagSet("brpc", flag.ContinueOnError)
	switch err := parse(fs, args); {
	case errors.Is(err, flag.ErrHelp):
		printUsage(stdout)
		return exitOK
	case err != nil:
		return usageError(stderr, err, printUsage)
	}
	if fs.NArg() == 0 {
		return usageError(stderr, errors.New("no command given"), printUsage)
	}
	name, rest := fs.Arg(0), fs.Args()[1:]
	if name == "help" {
		return help(rest, stdout, stderr, ext)
	}
	cmd, ok := lookup(name)
	if !ok {
		return usageError(stderr, fmt.Errorf("unknown command %q", name), printUsage)
	}
	cfs, runCmd := cmd.flags(ext)
	switch err := parse(cfs, rest); {
	case errors.Is(err, flag.ErrHelp):
		printCommandUsage(stdout, cmd, cfs)
		return exitOK
	case err != nil:
		return usageError(stderr, err, func(w io.Writer) { printCommandUsage(w, cmd, cfs) })
	case cfs.NArg() > 0 && cmd.args == "":
		return usageError(stderr, fmt.Errorf("unexpected argument %q", cfs.Arg(0)), func(w io.Writer) { printCommandUsage(w, cmd, cfs) })
	}
	err := runCmd(stdout)
	var bad *badUsage
	var input *badInput
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &bad):
		return usageError(stderr, err, func(w io.Writer) { printCommandUsage(w, cmd, cfs) })
	case errors.As(err, &input):
		fmt.Fprintf(stderr, "brpc %s: %v\n", cmd.name, err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "brpc %s: %v\n", cmd.name, err)
		return exitError
	}
}

// help answers "brpc help" and "brpc help <command>".
func help(args []string, stdout, stderr io.Writer, ext Extensions) int {
	switch len(args) {
	case 0:
		printUsage(stdout)
		return exitOK
	case 1:
		cmd, ok := lookup(args[0])
		if !ok {
			return usageError(stderr, fmt.Errorf("unknown command %q", args[0]), printUsage)
		}
		fs, _ := cmd.flags(ext)
		printCommandUsage(stdout, cmd, fs)
		return exitOK
	default:
		return usageError(stderr, errors.New("help takes at most one command"), printUsage)
	}
}

func lookup(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// parse parses args into fs without printing anything: run reports errors
// and help itself, so that help goes to stdout and errors to stderr.
func parse(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs.Parse(args)
}

// usageError prints err and the usage to stderr and returns exitUsage.
func usageError(stderr io.Writer, err error, usage func(io.Writer)) int {
	fmt.Fprintf(stderr, "brpc: %v\n\n", err)
	usage(stderr)
	return exitUsage
}

func printUsage(w io.Writer) {
	var b strings.Builder
	b.WriteString("brpc is the command-line tool of brpc, bidirectional gRPC for Go over QUIC.\n\n")
	b.WriteString("Usage:\n\n\tbrpc <command> [flags]\n\nThe commands are:\n\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "\t%-13s%s\n", c.name, c.summary)
	}
	fmt.Fprintf(&b, "\t%-13s%s\n", "help", "print this help, or a command's: brpc help <command>")
	b.WriteString("\nRun 'brpc <command> -help' for a command's flags.\n")
	io.WriteString(w, b.String())
}

func printCommandUsage(w io.Writer, cmd command, fs *flag.FlagSet) {
	var b strings.Builder
	args := ""
	if cmd.args != "" {
		args = " " + cmd.args
	}
	fmt.Fprintf(&b, "Usage: brpc %s [flags]%s\n\n%s.\n", cmd.name, args, upperFirst(cmd.summary))
	if cmd.details != "" {
		fmt.Fprintf(&b, "\n%s\n", cmd.details)
	}
	b.WriteString("\nFlags:\n")
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	io.WriteString(w, b.String())
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
