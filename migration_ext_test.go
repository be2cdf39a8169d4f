package brpc_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// TestQUICClientRebindingKeepsItsSession moves a QUIC client to a new source
// port mid-session, as a NAT that rebinds does: the session carries on
// (calls both ways, no disconnection, the same ID and session) and the
// server reports where the client's packets come from now, in Peers(),
// PeerFromContext and the peer of its gRPC calls.
func TestQUICClientRebindingKeepsItsSession(t *testing.T) {
	var mu sync.Mutex
	var events []brpc.PeerEvent
	var srec, crec peerRecorder
	e := testenv.New(t, testenv.Config{
		Transport:  "quic",
		GRPCOpts:   append(srec.options(), grpc.Creds(brpc.TransportCredentials())),
		ServerOpts: []brpc.ServerOption{brpc.WithPeerEvents(func(ev brpc.PeerEvent) { mu.Lock(); events = append(events, ev); mu.Unlock() })},
	})
	relay := testenv.NewUDPRelay(t, e.Addr, testenv.Faults{}, 1)
	c := e.Connect(testenv.ClientConfig{Name: "roamer", GRPCOpts: crec.options(), Target: "quic://" + relay.Addr()})

	// bothWays makes a forward call whose handler calls the client back, and
	// a reverse call from outside any handler.
	bothWays := func(ctx context.Context) error {
		r, err := c.Echo.Unary(ctx, &testpb.EchoRequest{Message: "m"})
		if err != nil {
			return err
		}
		if r.GetMessage() != "server:m|roamer:back" {
			t.Fatalf("Unary = %q, want server:m|roamer:back", r.GetMessage())
		}
		stub, err := e.Srv.Client(c.ID())
		if err != nil {
			return err
		}
		_, err = stub.Unary(ctx, &testpb.EchoRequest{Message: "r"})
		return err
	}
	if err := bothWays(testenv.Ctx(t)); err != nil {
		t.Fatalf("calls before the rebinding: %v", err)
	}
	before := e.Srv.Peers()
	old := relay.UpstreamAddr()
	if len(before) != 1 || before[0].RemoteAddr.String() != old {
		t.Fatalf("Peers() = %+v, want one client at %s", before, old)
	}

	moved, err := relay.Rebind()
	if err != nil {
		t.Fatal(err)
	}
	if moved == old {
		t.Fatalf("the relay still sends from %s after rebinding", old)
	}
	// The server moves the connection to the new address once it has
	// validated the path, which the calls' packets drive.
	testenv.WaitFor(t, 10*time.Second, "Peers() to show the client's new address "+moved, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := bothWays(ctx); err != nil {
			t.Fatalf("calls after the rebinding: %v", err)
		}
		p := e.Srv.Peers()
		return len(p) == 1 && p[0].RemoteAddr.String() == moved
	})
	if err := bothWays(testenv.Ctx(t)); err != nil {
		t.Fatalf("calls after the move: %v", err)
	}

	after := e.Srv.Peers()
	if after[0].ID != before[0].ID || !after[0].ConnectedAt.Equal(before[0].ConnectedAt) || c.ID() != before[0].ID {
		t.Fatalf("after the move the client is %+v (client's ID %q), want the same session as %+v", after[0], c.ID(), before[0])
	}
	s := srec.last(t)
	if !s.ok || s.brpc.ID != c.ID() || s.brpc.RemoteAddr.String() != moved || s.grpc.Addr.String() != moved {
		t.Fatalf("the server's last call saw PeerFromContext %+v (%v) and peer.Addr %v; want ID %q at %s", s.brpc, s.ok, s.grpc.Addr, c.ID(), moved)
	}
	if cs := crec.last(t); !cs.ok || cs.brpc.ID != "" {
		t.Fatalf("the client's last reverse call saw PeerFromContext %+v (%v), want the server", cs.brpc, cs.ok)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 1 || events[0].Type != brpc.PeerConnected {
		t.Fatalf("peer events during the session: %+v, want one PeerConnected and no disconnection", events)
	}
}
