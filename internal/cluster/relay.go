package cluster

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/gateway"
)

// notHereKey is the trailer with which the replica endpoint says that the
// client a call was forwarded for is not connected there. Only the
// endpoint sets it: trailers from the client's own handler lose it, so a
// client's own NotFound is never taken for a stale route.
const notHereKey = "brpc-cluster-not-here"

func notHere(tr metadata.MD) bool { return len(tr.Get(notHereKey)) > 0 }

// relay serves the replica endpoint: a call from another replica is
// relayed, by the gateway's relay, to the local client its target header
// names. The origin replica has authorized it already (a gateway call) or
// it is the server's own (Client(id)), so the endpoint admits every
// replica and passes brpc- headers through, save the target header.
func (c *Cluster) relay(srv any, ss grpc.ServerStream) error {
	if err := c.authorize(ss.Context()); err != nil {
		return err
	}
	err := c.relayHandler(srv, replicaStream{ss})
	if _, missing := err.(notHereError); missing {
		ss.SetTrailer(metadata.Pairs(notHereKey, "1"))
	}
	return err
}

// newRelayHandler builds the endpoint's relay, once per Cluster: the
// gateway handler and its Config are the same for every call.
func (c *Cluster) newRelayHandler() grpc.StreamHandler {
	return gateway.Handler(gateway.Config{
		TargetHeader: c.conf.TargetHeader,
		Kinds:        c.conf.Kinds,
		Authorize:    func(context.Context, string, string) error { return nil },
		Resolve: func(id string) (grpc.ClientConnInterface, error) {
			s, ok := c.core.Lookup(id)
			if !ok {
				return nil, notHereError{notFound(id)}
			}
			return s.Conn(), nil
		},
	})
}

// notHereError is the endpoint's own NotFound, for a client not connected
// here; the relay returns Resolve's error as it is, so relay can tell it
// from a NotFound the client's handler answered.
type notHereError struct{ error }

// GRPCStatus is the NotFound status the caller receives.
func (e notHereError) GRPCStatus() *status.Status { return status.Convert(e.error) }

// replicaStream keeps the not-here marker out of the trailers the client
// sends back.
type replicaStream struct{ grpc.ServerStream }

func (s replicaStream) SetTrailer(md metadata.MD) {
	if notHere(md) {
		md = md.Copy()
		delete(md, notHereKey)
	}
	s.ServerStream.SetTrailer(md)
}

// authorize admits the calls of replicas: peers whose certificate verified
// against the endpoint's CAs and, when set, passed IsReplica.
func (c *Cluster) authorize(ctx context.Context) (err error) {
	p, _ := peer.FromContext(ctx)
	var verified bool
	if p != nil {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			verified = len(ti.State.VerifiedChains) > 0
		}
	}
	if !verified {
		return status.Error(codes.Unauthenticated, "brpc: the replica endpoint serves only replicas, which present a certificate")
	}
	if c.conf.IsReplica == nil {
		return nil
	}
	defer func() {
		if r := recover(); r != nil {
			err = status.Errorf(codes.Internal, "brpc: IsReplica panicked: %v", r)
		}
	}()
	if rerr := c.conf.IsReplica(ctx); rerr != nil {
		if st, ok := status.FromError(rerr); ok && st.Code() != codes.OK && st.Code() != codes.Unknown {
			return st.Err()
		}
		return status.Error(codes.PermissionDenied, fmt.Sprintf("brpc: not a replica: %v", rerr))
	}
	return nil
}
