package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testpb"
)

// sinkMessage in a request's Message makes Unary answer with an empty
// response: bulk transfers then move data one way only.
const sinkMessage = "sink"

// echoServer is the service every path serves, on either side: Unary echoes
// the payload (or swallows it for sinkMessage) and ClientStream swallows a
// whole stream, answering with the number of bytes received.
type echoServer struct {
	testpb.UnimplementedEchoServer
}

func (echoServer) Unary(_ context.Context, r *testpb.EchoRequest) (*testpb.EchoResponse, error) {
	if r.GetMessage() == sinkMessage {
		return &testpb.EchoResponse{}, nil
	}
	return &testpb.EchoResponse{Payload: r.GetPayload()}, nil
}

func (echoServer) ClientStream(st testpb.Echo_ClientStreamServer) error {
	var n int64
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return st.SendAndClose(&testpb.EchoResponse{Index: int32(n >> 20)})
		}
		if err != nil {
			return err
		}
		n += int64(len(r.GetPayload()))
	}
}

// fixture is one path set up and ready: echo is the stub the benchmark
// calls; close tears everything down and waits for it.
type fixture struct {
	echo  testpb.EchoClient
	close func()
}

// pathSpec is one way of reaching an echo service.
type pathSpec struct {
	key   string // used by -paths and in the report
	label string // shown in tables and on the chart
	// rpc is false for the raw quic-go reference, which has no gRPC and only
	// takes part in the streaming bulk transfer.
	rpc   bool
	setup func(ctx context.Context, ca *certs.CA) (*fixture, error)
}

const (
	pathGRPCTCP     = "grpc-tcp"
	pathGRPCTLS     = "grpc-tls"
	pathQUICForward = "brpc-quic-fwd"
	pathQUICReverse = "brpc-quic-rev"
	pathTCPForward  = "brpc-tcp-fwd"
	pathTCPReverse  = "brpc-tcp-rev"
	pathRawQUIC     = "raw-quic"
)

// baselinePath is what every ratio is taken against.
const baselinePath = pathGRPCTLS

func allPaths() []pathSpec {
	return []pathSpec{
		{key: pathGRPCTCP, label: "grpc-go TCP (insecure)", rpc: true, setup: func(ctx context.Context, ca *certs.CA) (*fixture, error) {
			return setupGRPC(ctx, ca, false)
		}},
		{key: pathGRPCTLS, label: "grpc-go TLS-TCP (baseline)", rpc: true, setup: func(ctx context.Context, ca *certs.CA) (*fixture, error) {
			return setupGRPC(ctx, ca, true)
		}},
		{key: pathQUICForward, label: "brpc QUIC forward", rpc: true, setup: func(ctx context.Context, ca *certs.CA) (*fixture, error) {
			return setupBRPC(ctx, ca, "quic", false)
		}},
		{key: pathQUICReverse, label: "brpc QUIC reverse", rpc: true, setup: func(ctx context.Context, ca *certs.CA) (*fixture, error) {
			return setupBRPC(ctx, ca, "quic", true)
		}},
		{key: pathTCPForward, label: "brpc TCP forward", rpc: true, setup: func(ctx context.Context, ca *certs.CA) (*fixture, error) {
			return setupBRPC(ctx, ca, "tcp", false)
		}},
		{key: pathTCPReverse, label: "brpc TCP reverse", rpc: true, setup: func(ctx context.Context, ca *certs.CA) (*fixture, error) {
			return setupBRPC(ctx, ca, "tcp", true)
		}},
		{key: pathRawQUIC, label: "raw quic-go, 1 stream", rpc: false},
	}
}

// setupGRPC runs a plain grpc-go server on loopback TCP, with or without
// TLS, and connects a plain grpc-go client to it.
func setupGRPC(_ context.Context, ca *certs.CA, useTLS bool) (*fixture, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	sopts := grpcServerOptions()
	copt := grpc.WithTransportCredentials(insecure.NewCredentials())
	if useTLS {
		stls, err := serverTLS(ca)
		if err != nil {
			lis.Close()
			return nil, err
		}
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(stls)))
		copt = grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(ca)))
	}
	gs := grpc.NewServer(sopts...)
	testpb.RegisterEchoServer(gs, echoServer{})
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis)
	}()
	cc, err := grpc.NewClient(lis.Addr().String(), copt)
	if err != nil {
		gs.Stop()
		<-served
		return nil, err
	}
	return &fixture{
		echo: testpb.NewEchoClient(cc),
		close: func() {
			cc.Close()
			gs.Stop()
			<-served
		},
	}, nil
}

// brpcServer is a brpc server with the echo service on one listener.
type brpcServer struct {
	srv    *brpc.Server[testpb.EchoClient]
	target string
	served chan struct{}
}

// grpcWindow and grpcConnWindow are the -grpc-window and -grpc-conn-window
// flags: static HTTP/2 receive windows for every *grpc.Server of the
// bench; 0 leaves grpc-go's default, windows sized by its BDP estimation.
var grpcWindow, grpcConnWindow int

// grpcServerOptions are the options every *grpc.Server of the bench is
// built with, besides its credentials.
func grpcServerOptions() []grpc.ServerOption {
	var opts []grpc.ServerOption
	if grpcWindow > 0 {
		opts = append(opts, grpc.InitialWindowSize(int32(grpcWindow)))
	}
	if grpcConnWindow > 0 {
		opts = append(opts, grpc.InitialConnWindowSize(int32(grpcConnWindow)))
	}
	return opts
}

// reverseIdle is the -reverse-idle flag: how long the bench's brpc servers
// keep a client's reverse connection without calls.
var reverseIdle = brpc.DefaultReverseIdleTimeout

// forwardIdle is the -forward-idle flag: how long the bench's brpc clients
// keep their forward connection without calls.
var forwardIdle = brpc.DefaultForwardIdleTimeout

func startBRPCServer(ca *certs.CA, transport string, opts ...brpc.ServerOption) (*brpcServer, error) {
	return startBRPCServerIdle(ca, transport, reverseIdle, opts...)
}

// startBRPCServerIdle is startBRPCServer with a reverse idle timeout of its
// own.
func startBRPCServerIdle(ca *certs.CA, transport string, idle time.Duration, opts ...brpc.ServerOption) (*brpcServer, error) {
	stls, err := serverTLS(ca)
	if err != nil {
		return nil, err
	}
	listen := brpc.ListenQUIC
	if transport == "tcp" {
		listen = brpc.ListenTCP
	}
	lis, err := listen("127.0.0.1:0", stls)
	if err != nil {
		return nil, err
	}
	gs := grpc.NewServer(grpcServerOptions()...)
	testpb.RegisterEchoServer(gs, echoServer{})
	b := &brpcServer{
		srv:    brpc.NewServer(gs, testpb.NewEchoClient, append([]brpc.ServerOption{brpc.WithReverseIdleTimeout(idle)}, opts...)...),
		target: transport + "://" + lis.Addr().String(),
		served: make(chan struct{}),
	}
	go func() {
		defer close(b.served)
		_ = b.srv.Serve(lis)
	}()
	return b, nil
}

func (b *brpcServer) stop() {
	b.srv.Stop()
	<-b.served
}

// waitPeers waits until the server lists n clients.
func (b *brpcServer) waitPeers(ctx context.Context, n int) error {
	for len(b.srv.Peers()) != n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d clients listed, want %d: %w", len(b.srv.Peers()), n, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// setupBRPC runs a brpc server and one client serving the echo service of
// its own. Forward calls go client to server; reverse calls go server to
// client through srv.Client(id).
func setupBRPC(ctx context.Context, ca *certs.CA, transport string, reverse bool) (*fixture, error) {
	b, err := startBRPCServer(ca, transport)
	if err != nil {
		return nil, err
	}
	cgs := grpc.NewServer(grpcServerOptions()...)
	testpb.RegisterEchoServer(cgs, echoServer{})
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cc, err := brpc.Dial(dctx, b.target, brpc.WithTLSConfig(clientTLS(ca)), brpc.WithServer(cgs))
	if err != nil {
		cgs.Stop()
		b.stop()
		return nil, err
	}
	f := &fixture{
		echo: testpb.NewEchoClient(cc),
		close: func() {
			cc.Close()
			cgs.Stop()
			b.stop()
		},
	}
	if reverse {
		stub, err := b.srv.Client(cc.ID())
		if err != nil {
			f.close()
			return nil, err
		}
		f.echo = stub
	}
	return f, nil
}
