package brpc_test

import (
	"context"
	"testing"
	"time"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
)

// TestClosedListenerReportsServerStopped closes, on each transport, a
// Listener the server is serving while a client is connected through it:
// the client's disconnect is reported as DisconnectServerStopped, as that
// kind's doc says of a closed listener.
func TestClosedListenerReportsServerStopped(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		events := make(chan brpc.PeerEvent, 16)
		e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{
			brpc.WithPeerEvents(func(ev brpc.PeerEvent) { events <- ev }),
		}})
		// A second listener, served by the same server, for the
		// application to close.
		stls, err := e.CA.ServerTLS()
		if err != nil {
			t.Fatal(err)
		}
		lis, err := testenv.Listen(tr, "127.0.0.1:0", stls)
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- e.Srv.Serve(lis) }()

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cc, err := brpc.Dial(ctx, tr+"://"+lis.Addr().String(), brpc.WithTLSConfig(e.CA.ClientTLS()))
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		defer cc.Close()
		next := func(what string) brpc.PeerEvent {
			t.Helper()
			select {
			case ev := <-events:
				return ev
			case <-ctx.Done():
				t.Fatalf("no %s event", what)
				return brpc.PeerEvent{}
			}
		}
		if ev := next("connect"); ev.Type != brpc.PeerConnected || ev.Peer.ID != cc.ID() {
			t.Fatalf("first event %+v, want %s connected", ev, cc.ID())
		}

		if err := lis.Close(); err != nil {
			t.Fatalf("closing the listener: %v", err)
		}
		ev := next("disconnect")
		if ev.Type != brpc.PeerDisconnected || ev.Peer.ID != cc.ID() {
			t.Fatalf("event %+v, want %s disconnected", ev, cc.ID())
		}
		if ev.Kind != brpc.DisconnectServerStopped {
			t.Errorf("a closed listener's client disconnected as %q (%s), want %q", ev.Kind, ev.Reason, brpc.DisconnectServerStopped)
		}
		t.Logf("disconnect reason: %s", ev.Reason)
		select {
		case <-served:
		case <-ctx.Done():
			t.Fatal("Serve did not return after its listener was closed")
		}
	})
}
