package brpc

import (
	"context"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/client"
)

// ClientConn is a client's connection to a brpc server. It implements
// grpc.ClientConnInterface, so generated stubs call the server through it,
// and it serves the client's own *grpc.Server (WithServer) to the server.
//
// A ClientConn outlives its sessions: when a session ends for any reason
// other than Close, it reconnects with exponential backoff and jitter,
// authenticates again and goes on serving. Stubs built on it keep working.
// Calls made while it is disconnected wait or fail as grpc's wait-for-ready
// call option says. The one exception is a session the server closed
// because another connection took this client's ID: the ClientConn then
// stops (GetState reports Shutdown) rather than take the ID back.
type ClientConn struct {
	c *client.Conn
}

var _ grpc.ClientConnInterface = (*ClientConn)(nil)

// Dial connects, authenticates and returns once the server has accepted the
// client (or the error that rejected it). target is "quic://host:port",
// "tcp://host:port" (TLS over TCP) or "host:port": QUIC first, and TCP as
// well when QUIC has not connected within the fallback delay
// (WithFallbackDelay); whichever connects first is used, and tried first
// when reconnecting.
//
// The target may list several endpoints of one server (replicas),
// comma-separated after one optional scheme that applies to all of them:
// "quic://a:4433,b:4433", "tcp://a:443,b:443" or "a:4433,b:4433" (each
// endpoint then as a bare host:port is). Every connect and reconnect tries
// them one after the other, starting at a random one (a reconnect keeps
// the endpoint whose session ended for last), until one welcomes the
// client: an endpoint that cannot be reached, or that refuses with
// codes.Unavailable or codes.ResourceExhausted (a server that is stopping
// or full), passes the turn to the next; any other refusal
// (codes.PermissionDenied from the authenticator, say) ends the attempt
// with that status. ctx bounds the whole of Dial; each endpoint gets at
// most 20 s and, when ctx has a deadline, an equal share of the time left,
// so that one that never answers leaves time for the others. A tls.Config
// without ServerName verifies each endpoint's certificate for that
// endpoint's host.
//
// Dial does not retry: it fails within ctx's deadline when nothing answers.
// Errors are gRPC status errors: the server's rejection as it sent it,
// codes.InvalidArgument for a bad target (an unknown scheme, an endpoint
// without a port, an empty endpoint in a list, a scheme on an endpoint
// other than the first) or options, codes.DeadlineExceeded or
// codes.Canceled when ctx ends first, and codes.Unavailable when the server
// cannot be reached (with several endpoints: when none welcomed the
// client, codes.ResourceExhausted if every one said it was full).
func Dial(ctx context.Context, target string, opts ...DialOption) (*ClientConn, error) {
	o := defaultDialOptions()
	for _, opt := range opts {
		opt.applyDial(&o)
	}
	if o.tls == nil {
		return nil, status.Error(codes.InvalidArgument, "brpc: Dial needs WithTLSConfig")
	}
	scheme, hostports, err := client.ParseTarget(target)
	if err != nil {
		return nil, err
	}
	base := protocolTLS(o.tls)
	endpoints := make([]client.Endpoint, len(hostports))
	for i, hp := range hostports {
		tlsConf := base
		if base.ServerName == "" {
			// As tls.Dial does: the certificate must be the host's.
			host, _, _ := net.SplitHostPort(hp)
			tlsConf = base.Clone()
			tlsConf.ServerName = host
		}
		endpoints[i] = client.Endpoint{HostPort: hp, TLS: tlsConf}
	}
	c, err := client.Dial(ctx, o.config(target, scheme, endpoints))
	if err != nil {
		return nil, err
	}
	return &ClientConn{c: c}, nil
}

// GetState returns the connectivity state: Ready while a session is up
// (after a reconnect, once forward calls run on the new session), Connecting
// or TransientFailure while reconnecting, Shutdown once closed (or stopped
// because another connection took the client's ID).
func (c *ClientConn) GetState() connectivity.State { return c.c.GetState() }

// WaitForStateChange waits until the state differs from source or ctx ends;
// it reports whether the state changed, like grpc.ClientConn's method.
func (c *ClientConn) WaitForStateChange(ctx context.Context, source connectivity.State) bool {
	return c.c.WaitForStateChange(ctx, source)
}

// Invoke performs a unary RPC on the server. It implements
// grpc.ClientConnInterface.
func (c *ClientConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.c.Invoke(ctx, method, args, reply, opts...)
}

// NewStream begins a streaming RPC on the server. It implements
// grpc.ClientConnInterface.
func (c *ClientConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.c.NewStream(ctx, desc, method, opts...)
}

// ServerPeer describes the server end of the current session: its address,
// the transport in use and when the session started (the ID is empty). It
// reports false while the ClientConn is disconnected.
func (c *ClientConn) ServerPeer() (Peer, bool) {
	p, ok := c.c.ServerPeer()
	return Peer(p), ok
}

// ID returns the ID the server gave this client on its current (or last)
// session. An Authenticator that returns the same ID on every connection
// keeps it stable across reconnects.
func (c *ClientConn) ID() string { return c.c.ID() }

// Close closes both directions and stops reconnecting: calls in flight end
// with an error, the session ends and the client's *grpc.Server stops being
// fed. A *grpc.Server given with WithServer is not stopped: it may serve
// elsewhere too; call its Stop to wait for handlers still running.
func (c *ClientConn) Close() error { return c.c.Close() }
