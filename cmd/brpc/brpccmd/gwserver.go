package brpccmd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"net"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/cmd/brpc/echopb"
)

// gatewayServeFlags say where and how echo-server serves its gateway.
type gatewayServeFlags struct {
	addr         string
	certFile     string
	keyFile      string
	clientCAFile string
}

func (g *gatewayServeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&g.addr, "gateway", defaultGatewayAddr, "serve the gateway and the admin service at this TCP address; empty: no gateway. "+
		"Plaintext is only allowed on a loopback address; elsewhere it needs -gateway-cert, -gateway-key and -gateway-client-ca")
	fs.StringVar(&g.certFile, "gateway-cert", "", "the gateway's TLS certificate (PEM)")
	fs.StringVar(&g.keyFile, "gateway-key", "", "the gateway's TLS key (PEM), with -gateway-cert")
	fs.StringVar(&g.clientCAFile, "gateway-client-ca", "", "require gateway callers to present a certificate from this CA (PEM); every such caller may call every client")
}

// check refuses a gateway that would let anyone who reaches the address
// call every client: plaintext, or TLS without client certificates, on an
// address other than loopback.
func (g *gatewayServeFlags) check() error {
	if g.addr == "" {
		if g.certFile != "" || g.keyFile != "" || g.clientCAFile != "" {
			return &badUsage{"the -gateway-* flags need -gateway"}
		}
		return nil
	}
	host, _, err := net.SplitHostPort(g.addr)
	if err != nil {
		return &badUsage{fmt.Sprintf("-gateway %q: %v", g.addr, err)}
	}
	if (g.certFile == "") != (g.keyFile == "") {
		return &badUsage{"-gateway-cert and -gateway-key go together"}
	}
	if g.clientCAFile != "" && g.certFile == "" {
		return &badUsage{"-gateway-client-ca needs -gateway-cert and -gateway-key"}
	}
	if !isLoopback(host) && g.clientCAFile == "" {
		return &badUsage{fmt.Sprintf("-gateway %s is not a loopback address: a gateway there must require client certificates (-gateway-cert, -gateway-key and -gateway-client-ca), "+
			"or anyone who reaches it could call every client", g.addr)}
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// runningGateway is a gateway being served; a nil one is none.
type runningGateway struct {
	gs       *grpc.Server
	addr     string
	security string
	done     chan struct{}
}

// serveGateway serves srv's gateway, reflection and admin service as
// flags say, or nothing when they name no address. Every caller that
// reaches the gateway is admitted: on loopback that is anyone on this
// machine, elsewhere anyone with a certificate from the client CA.
func serveGateway(flags gatewayServeFlags, srv *brpc.Server[echopb.EchoClient]) (*runningGateway, error) {
	if flags.addr == "" {
		return nil, nil
	}
	// Static windows: a caller that stops reading holds what they allow,
	// not grpc-go's BDP-sized windows (docs/security.md).
	opts := []grpc.ServerOption{grpc.InitialWindowSize(256 << 10), grpc.InitialConnWindowSize(4 << 20)}
	security := "plaintext, loopback only, every caller admitted"
	if flags.certFile != "" {
		cert, err := tls.LoadX509KeyPair(flags.certFile, flags.keyFile)
		if err != nil {
			return nil, err
		}
		conf := &tls.Config{Certificates: []tls.Certificate{cert}}
		security = "TLS, every caller admitted"
		if flags.clientCAFile != "" {
			pem, err := os.ReadFile(flags.clientCAFile)
			if err != nil {
				return nil, err
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("no certificate in %s", flags.clientCAFile)
			}
			conf.ClientCAs, conf.ClientAuth = pool, tls.RequireAndVerifyClientCert
			security = "mutual TLS, every caller with a certificate from " + flags.clientCAFile + " admitted"
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(conf)))
	}
	// Who may reach the listener may call every client: the listener's
	// address and credentials are the whole of the access control.
	admitAll := func(context.Context, string, string) error { return nil }
	relay := srv.Gateway(admitAll)
	gs := grpc.NewServer(append(opts, grpc.UnknownServiceHandler(relay))...)
	brpc.RegisterGatewayReflection(gs, relay)
	srv.RegisterAdmin(gs)
	lis, err := net.Listen("tcp", flags.addr)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g := &runningGateway{gs: gs, addr: lis.Addr().String(), security: security, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		_ = gs.Serve(lis)
	}()
	return g, nil
}

// stop ends the gateway once its calls have ended, which they do as the
// brpc server stops: relayed calls with their clients' sessions, admin
// watches with the server (so a watcher is told why).
func (g *runningGateway) stop() {
	if g == nil {
		return
	}
	g.gs.GracefulStop()
	<-g.done
}
