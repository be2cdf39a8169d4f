package brpc_test

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

func TestDialRejectsBadInput(t *testing.T) {
	ca, err := certs.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	withTLS := brpc.WithTLSConfig(ca.ClientTLS())
	for _, tc := range []struct {
		name   string
		target string
		opts   []brpc.DialOption
		want   codes.Code
	}{
		{"no TLS config", "quic://127.0.0.1:1", nil, codes.InvalidArgument},
		{"unknown scheme", "http://127.0.0.1:1", []brpc.DialOption{withTLS}, codes.InvalidArgument},
		{"no port", "quic://127.0.0.1", []brpc.DialOption{withTLS}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := brpc.Dial(testenv.Ctx(t), tc.target, tc.opts...)
			testenv.WantCode(t, err, tc.want, "Dial("+tc.target+")")
		})
	}
}

func TestDialWhereNothingAnswersEndsWithCtx(t *testing.T) {
	// A UDP socket that never answers.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ca, err := certs.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = brpc.Dial(ctx, "quic://"+pc.LocalAddr().String(), brpc.WithTLSConfig(ca.ClientTLS()))
	testenv.WantCode(t, err, codes.DeadlineExceeded, "Dial to a silent address")
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Dial with a 300ms deadline took %v", took)
	}
}

func TestDialWrongServerCertificate(t *testing.T) {
	e := testenv.NewPlain(t)
	other, err := certs.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.Dial(testenv.ClientConfig{Name: "x", TLS: other.ClientTLS()})
	testenv.WantCode(t, err, codes.Unavailable, "Dial trusting another CA")
	if n := len(e.Srv.Peers()); n != 0 {
		t.Fatalf("%d peers after a failed TLS handshake", n)
	}
}

func TestListenNeedsACertificate(t *testing.T) {
	for name, listen := range map[string]func(string, *tls.Config) (brpc.Listener, error){
		"quic": brpc.ListenQUIC, "tcp": brpc.ListenTCP,
	} {
		if _, err := listen("127.0.0.1:0", nil); err == nil {
			t.Errorf("%s: listening without a certificate succeeded", name)
		}
		if _, err := listen("127.0.0.1:0", &tls.Config{}); err == nil {
			t.Errorf("%s: listening with an empty tls.Config succeeded", name)
		}
	}
}

func TestServeAfterStop(t *testing.T) {
	e := testenv.NewPlain(t)
	e.Srv.Stop()
	ca, _ := certs.NewCA()
	stls, _ := ca.ServerTLS()
	lis, err := brpc.ListenQUIC("127.0.0.1:0", stls)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Srv.Serve(lis); err != brpc.ErrServerStopped {
		t.Fatalf("Serve after Stop = %v, want ErrServerStopped", err)
	}
}

func TestOneServerServesQUICAndTCPOnOnePort(t *testing.T) {
	e := testenv.NewPlain(t)
	quicAddr, tcpAddr := e.ServeOnOnePort()
	if quicAddr[strings.LastIndexByte(quicAddr, ':'):] != tcpAddr[strings.LastIndexByte(tcpAddr, ':'):] {
		t.Fatalf("QUIC on %s and TCP on %s: not one port", quicAddr, tcpAddr)
	}

	e.Target = "quic://" + quicAddr
	q := e.Connect(testenv.ClientConfig{Name: "over-quic"})
	e.Target = "tcp://" + tcpAddr
	tc := e.Connect(testenv.ClientConfig{Name: "over-tcp"})
	byID := map[string]string{}
	for _, p := range e.Srv.Peers() {
		byID[p.ID] = p.Transport
	}
	if byID[q.ID()] != "quic" || byID[tc.ID()] != "tcp" || len(byID) != 2 {
		t.Fatalf("Peers() transports = %v, want %s over quic and %s over tcp", byID, q.ID(), tc.ID())
	}
	for _, c := range []*testenv.Client{q, tc} {
		stub, err := e.Srv.Client(c.ID())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{}); err != nil {
			t.Fatalf("reverse call to %s: %v", c.ID(), err)
		}
		if _, err := c.Echo.Unary(testenv.Ctx(t), &testpb.EchoRequest{}); err != nil {
			t.Fatalf("forward call from %s: %v", c.ID(), err)
		}
	}
}
