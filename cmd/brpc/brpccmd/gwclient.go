package brpccmd

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// defaultGatewayAddr is where echo-server serves its gateway, and where
// peers and call look for one.
const defaultGatewayAddr = "127.0.0.1:4480"

// gatewayFlags say how peers and call reach a server's gateway.
type gatewayFlags struct {
	addr     string
	caFile   string
	certFile string
	keyFile  string
}

func (g *gatewayFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&g.addr, "gateway", defaultGatewayAddr, "the server's gateway: host:port")
	fs.StringVar(&g.caFile, "ca", "", "speak TLS to the gateway, trusting this CA (PEM); empty: plaintext, for a gateway on loopback")
	fs.StringVar(&g.certFile, "cert", "", "client certificate (PEM) for a gateway that asks for one, with -key and -ca")
	fs.StringVar(&g.keyFile, "key", "", "client key (PEM), with -cert")
}

// check reports a combination of flags that cannot work.
func (g *gatewayFlags) check() error {
	if g.addr == "" {
		return &badUsage{"-gateway must name the gateway's host:port"}
	}
	if (g.certFile == "") != (g.keyFile == "") {
		return &badUsage{"-cert and -key go together"}
	}
	if g.certFile != "" && g.caFile == "" {
		return &badUsage{"-cert needs -ca: a client certificate is only sent over TLS"}
	}
	return nil
}

// dial makes the gRPC connection to the gateway; grpc.NewClient connects
// on the first call.
func (g *gatewayFlags) dial() (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if g.caFile != "" {
		pem, err := os.ReadFile(g.caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", g.caFile)
		}
		conf := &tls.Config{RootCAs: pool}
		if g.certFile != "" {
			cert, err := tls.LoadX509KeyPair(g.certFile, g.keyFile)
			if err != nil {
				return nil, err
			}
			conf.Certificates = []tls.Certificate{cert}
		}
		creds = credentials.NewTLS(conf)
	}
	return grpc.NewClient(g.addr, grpc.WithTransportCredentials(creds))
}

// rpcError describes a failed call by its status code and message, as a
// user reads it, rather than grpc-go's "rpc error: code = ... desc = ...".
type rpcError struct{ err error }

func (e *rpcError) Error() string {
	st := status.Convert(e.err)
	return fmt.Sprintf("%v: %s", st.Code(), st.Message())
}

func (e *rpcError) Unwrap() error { return e.err }
