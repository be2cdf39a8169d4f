package brpc_test

import (
	"testing"

	"github.com/brpc-go/brpc/internal/testpb"
)

func TestForwardAndReverseUnary(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.connect(clientConfig{name: "alice"})
	r, err := c.echo.Unary(testCtx(t), &testpb.EchoRequest{Message: "hi"})
	if err != nil {
		t.Fatalf("Unary: %v", err)
	}
	if want := "server:hi|alice:back"; r.GetMessage() != want {
		t.Fatalf("got %q, want %q", r.GetMessage(), want)
	}
	if r.GetPeerId() != c.ID() {
		t.Fatalf("server saw caller %q, want %q", r.GetPeerId(), c.ID())
	}
}
