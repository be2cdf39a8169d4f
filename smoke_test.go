package brpc_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testpb"
)

type echoSrv struct {
	testpb.UnimplementedEchoServer
	name string
	call func(ctx context.Context) string
}

func (e *echoSrv) Unary(ctx context.Context, r *testpb.EchoRequest) (*testpb.EchoResponse, error) {
	p, _ := brpc.PeerFromContext(ctx)
	msg := e.name + ":" + r.Message
	if e.call != nil {
		msg += "|" + e.call(ctx)
	}
	return &testpb.EchoResponse{Message: msg, PeerId: p.ID}, nil
}

func TestSmoke(t *testing.T) {
	ca, _ := certs.NewCA()
	stls, _ := ca.ServerTLS()
	gs := grpc.NewServer()
	var srv *brpc.Server[testpb.EchoClient]
	testpb.RegisterEchoServer(gs, &echoSrv{name: "server", call: func(ctx context.Context) string {
		c, err := srv.ClientFromContext(ctx)
		if err != nil {
			return err.Error()
		}
		r, err := c.Unary(ctx, &testpb.EchoRequest{Message: "back"})
		if err != nil {
			return err.Error()
		}
		return r.Message
	}})
	srv = brpc.NewServer(gs, testpb.NewEchoClient)
	lis, err := brpc.ListenQUIC("127.0.0.1:0", stls)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()
	cgs := grpc.NewServer()
	testpb.RegisterEchoServer(cgs, &echoSrv{name: "client"})
	defer cgs.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc, err := brpc.Dial(ctx, "quic://"+lis.Addr().String(), brpc.WithTLSConfig(ca.ClientTLS()), brpc.WithServer(cgs))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	r, err := testpb.NewEchoClient(cc).Unary(ctx, &testpb.EchoRequest{Message: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("id=%s resp=%+v peers=%v", cc.ID(), r, srv.Peers())
}
