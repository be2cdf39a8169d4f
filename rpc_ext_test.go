package brpc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// eachDirection runs fn as a subtest for each transport and, within it, for
// each direction (forward, then reverse) of one client, "alice", of a fresh
// plain env.
func eachDirection(t *testing.T, fn func(t *testing.T, d testenv.Direction)) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := testenv.NewPlainOn(t, tr)
		c := e.Connect(testenv.ClientConfig{Name: "alice"})
		for _, d := range testenv.Directions(t, e, c, "alice") {
			t.Run(d.Name, func(t *testing.T) { fn(t, d) })
		}
	})
}

func TestAllRPCKindsBothDirections(t *testing.T) {
	eachDirection(t, func(t *testing.T, d testenv.Direction) {
		ctx := testenv.Ctx(t)
		check := func(kind string, r *testpb.EchoResponse, msg string, index int32) {
			t.Helper()
			if want := d.Answerer + ":" + msg; r.GetMessage() != want {
				t.Errorf("%s: message %q, want %q", kind, r.GetMessage(), want)
			}
			if r.GetPeerId() != d.WantPeer {
				t.Errorf("%s: handler saw caller %q, want %q", kind, r.GetPeerId(), d.WantPeer)
			}
			if r.GetIndex() != index {
				t.Errorf("%s: index %d, want %d", kind, r.GetIndex(), index)
			}
		}

		r, err := d.Stub.Unary(ctx, &testpb.EchoRequest{Message: "unary"})
		if err != nil {
			t.Fatalf("Unary: %v", err)
		}
		check("unary", r, "unary", 0)

		ss, err := d.Stub.ServerStream(ctx, &testpb.EchoRequest{Message: "ss", Count: 5})
		if err != nil {
			t.Fatalf("ServerStream: %v", err)
		}
		for i := int32(0); ; i++ {
			r, err := ss.Recv()
			if errors.Is(err, io.EOF) {
				if i != 5 {
					t.Fatalf("ServerStream ended after %d messages, want 5", i)
				}
				break
			}
			if err != nil {
				t.Fatalf("ServerStream.Recv: %v", err)
			}
			check("server stream", r, "ss", i)
		}

		cs, err := d.Stub.ClientStream(ctx)
		if err != nil {
			t.Fatalf("ClientStream: %v", err)
		}
		for i := 0; i < 7; i++ {
			if err := cs.Send(&testpb.EchoRequest{Message: fmt.Sprint("cs", i)}); err != nil {
				t.Fatalf("ClientStream.Send: %v", err)
			}
		}
		r, err = cs.CloseAndRecv()
		if err != nil {
			t.Fatalf("ClientStream.CloseAndRecv: %v", err)
		}
		check("client stream", r, "cs6", 7)

		bs, err := d.Stub.BidiStream(ctx)
		if err != nil {
			t.Fatalf("BidiStream: %v", err)
		}
		for i := int32(0); i < 10; i++ {
			msg := fmt.Sprint("bidi", i)
			if err := bs.Send(&testpb.EchoRequest{Message: msg}); err != nil {
				t.Fatalf("BidiStream.Send: %v", err)
			}
			r, err := bs.Recv()
			if err != nil {
				t.Fatalf("BidiStream.Recv: %v", err)
			}
			check("bidi stream", r, msg, i)
		}
		if err := bs.CloseSend(); err != nil {
			t.Fatalf("BidiStream.CloseSend: %v", err)
		}
		if _, err := bs.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("BidiStream after CloseSend: %v, want io.EOF", err)
		}
	})
}

func TestDeadlinesBothDirections(t *testing.T) {
	eachDirection(t, func(t *testing.T, d testenv.Direction) {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := d.Stub.Unary(ctx, &testpb.EchoRequest{Message: "slow", SleepMs: 5000})
		testenv.WantCode(t, err, codes.DeadlineExceeded, "Unary past its deadline")
		if took := time.Since(start); took > 3*time.Second {
			t.Fatalf("a call with a 100ms deadline took %v", took)
		}
		// The session is still fine afterwards.
		if _, err := d.Stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "ok"}); err != nil {
			t.Fatalf("Unary after a deadline: %v", err)
		}
	})
}

func TestCancellationBothDirections(t *testing.T) {
	eachDirection(t, func(t *testing.T, d testenv.Direction) {
		ctx, cancel := context.WithCancel(context.Background())
		st, err := d.Stub.ServerStream(ctx, &testpb.EchoRequest{Message: "slow", Count: 1000, SleepMs: 50})
		if err != nil {
			t.Fatalf("ServerStream: %v", err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatalf("first Recv: %v", err)
		}
		cancel()
		for {
			_, err = st.Recv()
			if err != nil {
				break
			}
		}
		testenv.WantCode(t, err, codes.Canceled, "Recv after cancel")
	})
}

func TestMetadataBothDirections(t *testing.T) {
	eachDirection(t, func(t *testing.T, d testenv.Direction) {
		ctx := metadata.AppendToOutgoingContext(testenv.Ctx(t), "x-echo-color", "blue", "x-echo-bin-bin", "\x00\x01")
		var header, trailer metadata.MD
		if _, err := d.Stub.Unary(ctx, &testpb.EchoRequest{Message: "md"}, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil {
			t.Fatalf("Unary: %v", err)
		}
		for what, md := range map[string]metadata.MD{"header": header, "trailer": trailer} {
			wantMD(t, "unary "+what, md, "x-echo-color", "blue")
			wantMD(t, "unary "+what, md, "x-echo-bin-bin", "\x00\x01")
		}

		bs, err := d.Stub.BidiStream(ctx)
		if err != nil {
			t.Fatalf("BidiStream: %v", err)
		}
		h, err := bs.Header()
		if err != nil {
			t.Fatalf("BidiStream.Header: %v", err)
		}
		wantMD(t, "stream header", h, "x-echo-color", "blue")
		bs.CloseSend()
		if _, err := bs.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("Recv: %v, want io.EOF", err)
		}
		wantMD(t, "stream trailer", bs.Trailer(), "x-echo-color", "blue")
	})
}

// wantMD reports an error unless md holds exactly one value, want, for key.
func wantMD(t *testing.T, what string, md metadata.MD, key, want string) {
	t.Helper()
	if got := md.Get(key); len(got) != 1 || got[0] != want {
		t.Errorf("%s %s = %q, want [%q]", what, key, got, want)
	}
}

func TestStatusDetailsBothDirections(t *testing.T) {
	eachDirection(t, func(t *testing.T, d testenv.Direction) {
		_, err := d.Stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{FailCode: int32(codes.FailedPrecondition)})
		testenv.WantCode(t, err, codes.FailedPrecondition, "Unary asked to fail")
		st := status.Convert(err)
		if want := d.Answerer + ": failing as asked"; st.Message() != want {
			t.Errorf("message %q, want %q", st.Message(), want)
		}
		details := st.Details()
		if len(details) != 1 {
			t.Fatalf("got %d details, want 1", len(details))
		}
		if r, ok := details[0].(*testpb.EchoResponse); !ok || r.GetMessage() != d.Answerer+":detail" {
			t.Fatalf("detail = %v, want EchoResponse %q", details[0], d.Answerer+":detail")
		}
	})
}

func TestLargeMessagesBothDirections(t *testing.T) {
	// grpc-go's default receive limit is 4 MiB per message.
	big := bytes.Repeat([]byte("brpc"), (4<<20-1024)/4)
	eachDirection(t, func(t *testing.T, d testenv.Direction) {
		r, err := d.Stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "big", Payload: big})
		if err != nil {
			t.Fatalf("Unary with %d bytes: %v", len(big), err)
		}
		if !bytes.Equal(r.GetPayload(), big) {
			t.Fatalf("payload came back with %d bytes, differing", len(r.GetPayload()))
		}
		tooBig := append(big[:len(big):len(big)], make([]byte, 8<<10)...)
		_, err = d.Stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Payload: tooBig})
		testenv.WantCode(t, err, codes.ResourceExhausted, "Unary above the 4 MiB limit")
		if _, err := d.Stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "after"}); err != nil {
			t.Fatalf("Unary after an oversized one: %v", err)
		}
	})
}
