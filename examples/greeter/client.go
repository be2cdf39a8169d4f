package greeter

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/examples/greeter/greeterpb"
)

// ClientConfig configures RunClient.
type ClientConfig struct {
	// Addr is the server's address, host:port.
	Addr string
	// CAFile holds the PEM certificate of the CA the server's certificate
	// must chain to: the file the server wrote.
	CAFile string
	// Name is what the client's Namer service answers when the server asks.
	Name string
	// Hellos is how many times the client calls SayHello.
	Hellos int
	// Interval is the pause between two hellos.
	Interval time.Duration
}

// RunClient connects to the greeter server, serves Namer to it, says hello
// cfg.Hellos times and prints the replies to out. It returns once done, or
// when ctx is.
func RunClient(ctx context.Context, cfg ClientConfig, out io.Writer) error {
	logger := log.New(out, "", log.Ltime)
	roots, err := loadCA(cfg.CAFile)
	if err != nil {
		return err
	}

	// The client's own services, which the server calls over the same
	// connection. The client keeps ownership of this grpc.Server; brpc's
	// credentials show its handlers the server's address and TLS state.
	gs := grpc.NewServer(grpc.Creds(brpc.TransportCredentials()))
	greeterpb.RegisterNamerServer(gs, &namerService{name: cfg.Name, log: logger})
	defer gs.Stop()

	dialCtx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	cc, err := brpc.Dial(dialCtx, "quic://"+cfg.Addr,
		brpc.WithTLSConfig(&tls.Config{RootCAs: roots}),
		brpc.WithServer(gs),
		// Sent once at connect; the server sees it in Peers() and could
		// authenticate the client with it.
		brpc.WithMetadata(metadata.Pairs("name", cfg.Name)),
	)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", cfg.Addr, err)
	}
	defer cc.Close()
	logger.Printf("connected to quic://%s; the server knows this client as %s", cfg.Addr, cc.ID())

	// A *brpc.ClientConn is a grpc.ClientConnInterface: generated stubs work
	// on it unchanged.
	greeter := greeterpb.NewGreeterClient(cc)
	for i := 1; i <= cfg.Hellos; i++ {
		if i > 1 {
			if err := sleep(ctx, cfg.Interval); err != nil {
				return err
			}
		}
		if err := sayHello(ctx, greeter, i, logger); err != nil {
			return err
		}
	}
	return nil
}

// sayHello makes one call to the server and prints the reply.
func sayHello(ctx context.Context, greeter greeterpb.GreeterClient, i int, logger *log.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	start := time.Now()
	r, err := greeter.SayHello(ctx, &greeterpb.HelloRequest{Greeting: fmt.Sprintf("hello #%d", i)})
	if err != nil {
		return fmt.Errorf("SayHello: %w", err)
	}
	logger.Printf("reply: %s (%s)", r.GetMessage(), time.Since(start).Round(time.Microsecond))
	return nil
}

// sleep waits for d, or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// errNoCertificate is returned when the CA file holds no certificate.
var errNoCertificate = errors.New("no PEM certificate found")

// loadCA reads the server's CA certificate into a pool to verify it with.
func loadCA(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading the CA certificate (start the server first; it writes it): %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: %w", file, errNoCertificate)
	}
	return pool, nil
}

// namerService serves Namer: the server calls it to learn the client's
// name, both while handling the client's SayHello and on its own.
type namerService struct {
	greeterpb.UnimplementedNamerServer
	name string
	log  *log.Logger
}

// GetName answers with the client's name.
func (n *namerService) GetName(ctx context.Context, _ *greeterpb.NameRequest) (*greeterpb.NameReply, error) {
	reason := "no reason given"
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get("reason")) > 0 {
		reason = md.Get("reason")[0]
	}
	n.log.Printf("the server called GetName on this client (%s): answering %q", reason, n.name)
	return &greeterpb.NameReply{Name: n.name}, nil
}
