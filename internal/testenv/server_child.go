package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testpb"
)

// ServerRole is the built-in child role "server": a brpc server with the
// echo service (answering as "server", without calling back) on a loopback
// port of the transport named by the argument "transport" (default QUIC).
// Its ready words are target=TARGET and ca=BASE64-PEM. Besides
// "footprint" and "allocated" it answers "peers" (the number of connected
// clients), "sleeping" (the echo handlers waiting out a request's SleepMs)
// and "call ID" (a reverse Unary to that client; the answer's message).
func ServerRole(c *ChildEnv) ([]string, error) {
	return serve(c, nil, nil)
}

// ServerRoleWith is ServerRole with a server built with opts, for a
// package to register under a name of its own (RunChild's roles) and
// start with StartServerChildAs.
func ServerRoleWith(opts ...brpc.ServerOption) Role {
	return func(c *ChildEnv) ([]string, error) { return serve(c, nil, opts) }
}

// ServerRoleWithGRPC is ServerRoleWith whose application *grpc.Server is
// built with grpcOpts as well.
func ServerRoleWithGRPC(grpcOpts []grpc.ServerOption, opts ...brpc.ServerOption) Role {
	return func(c *ChildEnv) ([]string, error) { return serve(c, grpcOpts, opts) }
}

func serve(c *ChildEnv, grpcOpts []grpc.ServerOption, opts []brpc.ServerOption) ([]string, error) {
	transport := c.Arg("transport")
	if transport == "" {
		transport = "quic"
	}
	ca, err := certs.NewCA()
	if err != nil {
		return nil, err
	}
	stls, err := ca.ServerTLS()
	if err != nil {
		return nil, err
	}
	echo := &Echo{Name: "server"}
	s, err := StartServing(transport, "127.0.0.1:0", stls, echo, grpcOpts, opts)
	if err != nil {
		return nil, err
	}
	srv := s.Srv
	c.Cleanup(func() { s.Stop() })
	c.Handle("peers", func([]string) (string, error) { return fmt.Sprint(len(srv.Peers())), nil })
	c.Handle("sleeping", func([]string) (string, error) { return fmt.Sprint(echo.Sleeping()), nil })
	c.Handle("call", ReverseCall(srv))
	return []string{
		"target=" + transport + "://" + s.Lis.Addr().String(),
		"ca=" + base64.StdEncoding.EncodeToString(ca.CertPEM()),
	}, nil
}

// ReverseCall is a child's "call ID" command on srv: a reverse Unary to the
// client with that ID, answered by the client's echo message.
func ReverseCall(srv *brpc.Server[testpb.EchoClient]) func(args []string) (string, error) {
	return func(args []string) (string, error) {
		if len(args) != 1 {
			return "", fmt.Errorf("call takes a client ID")
		}
		stub, err := srv.Client(args[0])
		if err != nil {
			return "", err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		r, err := stub.Unary(ctx, &testpb.EchoRequest{Message: "from-child"})
		if err != nil {
			return "", err
		}
		return r.GetMessage(), nil
	}
}

// RemoteServer is a brpc server running in a child process (ServerRole),
// so that what it holds can be measured apart from what the test's own
// clients, or attackers, hold.
type RemoteServer struct {
	*Child
	// Target is what clients dial.
	Target string
	roots  *x509.CertPool
}

// StartServerChild starts a ServerRole child on transport.
func StartServerChild(t testing.TB, transport string) *RemoteServer {
	t.Helper()
	return StartServerChildAs(t, "server", transport)
}

// StartServerChildAs starts a child playing role, a ServerRole or a
// ServerRoleWith registered under that name, on transport.
func StartServerChildAs(t testing.TB, role, transport string) *RemoteServer {
	t.Helper()
	c := StartChild(t, role, map[string]string{"transport": transport})
	s := &RemoteServer{Child: c, roots: x509.NewCertPool()}
	for _, w := range c.Ready {
		switch k, v, _ := strings.Cut(w, "="); k {
		case "target":
			s.Target = v
		case "ca":
			pem, err := base64.StdEncoding.DecodeString(v)
			if err != nil || !s.roots.AppendCertsFromPEM(pem) {
				t.Fatalf("the server child's CA certificate: %v", err)
			}
		}
	}
	if s.Target == "" {
		t.Fatalf("the server child reported no target: %q", c.Ready)
	}
	return s
}

// ClientTLS is a client configuration that trusts the child's server.
func (s *RemoteServer) ClientTLS() *tls.Config { return &tls.Config{RootCAs: s.roots} }

// Endpoint is the child's server as a raw attacker reaches it.
func (s *RemoteServer) Endpoint() Endpoint {
	_, addr, _ := strings.Cut(s.Target, "://")
	return Endpoint{Addr: addr, Roots: s.roots}
}

// WantServes connects an ordinary client named name, serving its own echo
// service, to the child's server; makes a forward call and has the child
// call the client back; and fails the test unless both answer (the forward
// call within 5s). The client is closed when it returns. It returns how
// long Dial took.
func (s *RemoteServer) WantServes(t testing.TB, name string) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gs := grpc.NewServer()
	testpb.RegisterEchoServer(gs, &Echo{Name: name})
	defer gs.Stop()
	start := time.Now()
	cc, err := brpc.Dial(ctx, s.Target, brpc.WithTLSConfig(s.ClientTLS()), brpc.WithServer(gs))
	took := time.Since(start)
	if err != nil {
		t.Fatalf("an ordinary client cannot connect to the server child (after %v): %v", took, err)
	}
	defer cc.Close()
	callCtx, callCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer callCancel()
	r, err := testpb.NewEchoClient(cc).Unary(callCtx, &testpb.EchoRequest{Message: "hi"})
	if err != nil {
		t.Fatalf("forward Unary from %s to the server child: %v", name, err)
	}
	if want := "server:hi"; r.GetMessage() != want {
		t.Fatalf("forward Unary from %s: got %q, want %q", name, r.GetMessage(), want)
	}
	if got, want := s.Do(t, "call", cc.ID()), name+":from-child"; got != want {
		t.Fatalf("reverse Unary from the server child to %s: got %q, want %q", name, got, want)
	}
	return took
}
