package integrationtests

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/session"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// TestUndeliveredWelcomeEvictsNobody: a newer session under a connected
// client's ID replaces the older one only once its own welcome is written.
// Here the newer one's connection is gone by the time the server welcomes
// it, so the older session goes on serving calls both ways as if nothing
// had happened.
func TestUndeliveredWelcomeEvictsNobody(t *testing.T) {
	authenticating := make(chan struct{}, 1)
	auth := func(ctx context.Context, info brpc.AuthInfo) (string, error) {
		if len(info.Metadata.Get("stall")) > 0 {
			// Admit the newcomer only once its connection has ended, so
			// that its welcome cannot be delivered.
			authenticating <- struct{}{}
			<-ctx.Done()
		}
		return info.Metadata.Get("name")[0], nil
	}
	var mu sync.Mutex
	var events []brpc.PeerEvent
	rejected := make(chan brpc.PeerEvent, 1)
	record := func(ev brpc.PeerEvent) {
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
		if ev.Type == brpc.PeerRejected {
			rejected <- ev
		}
	}
	// QUIC: the server learns at once that the newcomer's connection ended,
	// which is what the Authenticator above waits for.
	e := testenv.New(t, testenv.Config{Transport: "quic", ServerOpts: []brpc.ServerOption{
		brpc.WithAuthenticator(auth), brpc.WithPeerEvents(record),
	}})
	older := e.Connect(testenv.ClientConfig{Name: "bob", MD: metadata.Pairs("name", "bob")})
	before := e.Srv.Peers()

	newer := rawSession(t, e, "quic")
	ctx := testenv.Ctx(t)
	ctrl, err := newer.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake.WriteMsg(ctrl, handshake.NewHello(metadata.Pairs("name", "bob", "stall", "1"))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-authenticating:
	case <-ctx.Done():
		t.Fatal("the newer session's hello never reached the Authenticator")
	}
	newer.Close(session.CodeNormal, "gone before the welcome")
	select {
	case ev := <-rejected:
		t.Logf("the newer session ended with: %s", ev.Reason)
	case <-ctx.Done():
		t.Fatal("the newer session was neither welcomed nor refused")
	}

	if got := e.Srv.Peers(); len(got) != 1 || got[0].ID != "bob" || !got[0].ConnectedAt.Equal(before[0].ConnectedAt) {
		t.Fatalf("Peers() = %v after a newer session failed its welcome, want the older session %v", got, before)
	}
	if st := older.GetState(); st != connectivity.Ready {
		t.Fatalf("the older client is %v, want Ready", st)
	}
	testenv.CallOK(t, older, "bob")
	rev, err := e.Srv.Client("bob")
	if err != nil {
		t.Fatalf("Client(bob): %v", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if r, err := rev.Unary(cctx, &testpb.EchoRequest{Message: "you there?"}); err != nil || r.GetMessage() != "bob:you there?" {
		t.Fatalf("a reverse call on the older session: %v, %v", r, err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, ev := range events {
		if ev.Type == brpc.PeerDisconnected {
			t.Fatalf("the older session was disconnected: %s (%s)", ev.Kind, ev.Reason)
		}
	}
}
