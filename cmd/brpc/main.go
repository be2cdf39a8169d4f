// Command brpc is brpc's command-line tool.
//
// Usage:
//
//	brpc <command> [flags]
//
// The commands are:
//
//	demo         run a server and a few clients in one process and show
//	             calls in both directions
//	echo-server  serve an echo service on QUIC and TCP, alone or as a
//	             replica of a cluster (-replica, -etcd: in the build of
//	             brpcetcd/cmd/brpc)
//	echo-client  connect to an echo-server and report the transport and
//	             latency in both directions
//	peers        list (or watch) the clients connected to a server, or to
//	             every replica of its cluster, through its gateway's admin
//	             service
//	call         call a method of a connected client through a server's
//	             gateway, with JSON, using the client's reflection
//	help         print this help, or a command's: brpc help <command>
//
// echo-server and echo-client speak the protocol of echopb/echo.proto;
// echo-server also serves a gateway with the admin service, so that peers
// and call can be tried against it. Like brpc's examples, the command uses
// brpc's public API only; package brpccmd holds it.
//
// Run it from the repository root with: go run ./cmd/brpc demo
package main

import (
	"os"

	"github.com/brpc-go/brpc/cmd/brpc/brpccmd"
)

func main() {
	os.Exit(brpccmd.Run(os.Args[1:], os.Stdout, os.Stderr, brpccmd.Extensions{}))
}
