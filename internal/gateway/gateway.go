// Package gateway relays gRPC calls that arrive on an application's
// *grpc.Server to a connected client's reverse connection, message by
// message and without decoding them.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Config says how a gateway finds the clients it relays to and who may
// reach them.
type Config struct {
	// TargetHeader is the request header that names the client.
	TargetHeader string
	// ReservedPrefix marks request headers that only the server may set:
	// a caller's headers with it are not relayed.
	ReservedPrefix string
	// Authorize admits a call for clientID and fullMethod; nil refuses
	// every call.
	Authorize func(ctx context.Context, clientID, fullMethod string) error
	// Resolve returns the reverse connection of the client with this ID,
	// or a status error (NotFound) when none is connected.
	Resolve func(id string) (grpc.ClientConnInterface, error)

	// CallerHeader and CallerAddrHeader, when set, are the request headers
	// the gateway adds to every relayed call: the principal the call was
	// admitted for (EncodeValue'd; "" for an anonymous caller) and the
	// caller's network address. They should carry ReservedPrefix, so that
	// no caller can send them itself.
	CallerHeader, CallerAddrHeader string
	// PassReserved, when set and true for a call, says its caller is a
	// trusted origin (another gateway relaying for its own caller): the
	// caller's ReservedPrefix headers, but the target header, are relayed
	// as sent, and when they include CallerHeader the gateway adds no
	// caller headers of its own, so the client learns the origin's caller.
	PassReserved func(ctx context.Context) bool
	// Limiter, when set, bounds the calls in flight: a call beyond it is
	// refused with ResourceExhausted before the client is called.
	Limiter *Limiter
	// Kinds, when set, holds the kinds of methods the application says its
	// clients serve (MethodKinds), by full method name. The relay cannot
	// tell a method's kind from the call itself: a caller's single message
	// and half-close look the same for a unary, a server-streaming and a
	// client- or bidirectional-streaming call, and a bidirectional caller
	// may wait for the client to speak first. For a method listed here
	// without client streams, the relay receives the one request before it
	// calls the client, and a unary one goes out as a unary call. Methods
	// not listed take the general relay. Not changed once in use.
	Kinds map[string]Kind
}

// Kind is what the relay knows of a method's shape.
type Kind uint8

const (
	// KindStreaming is a method with client streams, or one of unknown
	// kind: the general, message-by-message relay.
	KindStreaming Kind = iota
	// KindUnary is a method with one request and one response.
	KindUnary
	// KindServerStreaming is a method with one request and a stream of
	// responses.
	KindServerStreaming
)

// MethodKinds lists the kinds of the methods of services, for
// Config.Kinds: a grpc.ServiceDesc's Methods are unary and its Streams
// say their own kind.
func MethodKinds(services ...*grpc.ServiceDesc) map[string]Kind {
	kinds := make(map[string]Kind)
	for _, sd := range services {
		if sd == nil {
			continue
		}
		for _, m := range sd.Methods {
			kinds["/"+sd.ServiceName+"/"+m.MethodName] = KindUnary
		}
		for _, st := range sd.Streams {
			k := KindStreaming
			if !st.ClientStreams {
				k = KindServerStreaming
				if !st.ServerStreams {
					k = KindUnary
				}
			}
			kinds["/"+sd.ServiceName+"/"+st.StreamName] = k
		}
	}
	return kinds
}

// relayDesc lets one stream carry any of the four RPC kinds: the client's
// own server knows the method's kind and enforces it.
var relayDesc = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// Handler returns the grpc.StreamHandler that relays every call it gets
// (for grpc.UnknownServiceHandler).
func Handler(conf Config) grpc.StreamHandler {
	return func(_ any, ss grpc.ServerStream) error { return relay(conf, ss) }
}

func relay(conf Config, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "brpc gateway: the call has no method name")
	}
	ctx := ss.Context()
	in, _ := metadata.FromIncomingContext(ctx)
	id, err := target(in, conf.TargetHeader)
	if err != nil {
		return err
	}
	// Authorization comes before the lookup, so that a caller who may not
	// reach a client cannot learn whether it is connected.
	who := &callerSlot{}
	err = authorize(context.WithValue(ctx, callerKey{}, who), conf.Authorize, id, method)
	named, isNamed := who.seal()
	if err != nil {
		return err
	}
	conn, err := conf.Resolve(id)
	if err != nil {
		return err
	}
	// The limiter's slot is held until the relay returns, which is once
	// the client's side of the call has ended: a streaming call holds it
	// for as long as it runs.
	if conf.Limiter != nil {
		if err := conf.Limiter.acquire(id); err != nil {
			return err
		}
		defer conf.Limiter.release(id)
	}
	// The relayed call runs on the handler's context: grpc-go cancels it
	// once the handler has returned (its status written, or the stream
	// reset), which ends the client's side of the call whenever the relay
	// returns early (the caller went away, a send failed).
	pass := conf.PassReserved != nil && conf.PassReserved(ctx)
	md := forwardable(in, conf, pass)
	if !isNamed {
		named = principalOf(ctx)
	}
	addCaller(md, conf, pass, named, addrOf(ctx))
	out := metadata.NewOutgoingContext(ctx, md)
	switch conf.Kinds[method] {
	case KindUnary:
		return relayUnary(out, ss, conn, method)
	case KindServerStreaming:
		return relayServerStreaming(out, ss, conn, method)
	}
	cs, err := conn.NewStream(out, relayDesc, method, grpc.ForceCodecV2(relayCodec{}))
	if err != nil {
		return err
	}
	go upload(ss, cs)
	return download(ss, cs)
}

// serverStreamingDesc is the stream of a method with one request.
var serverStreamingDesc = &grpc.StreamDesc{ServerStreams: true}

// relayUnary relays a call of a unary method as a unary call: the one
// request and its end in one go, no goroutine of the relay's own, and none
// that grpc-go's streaming client path adds to watch a stream's context.
func relayUnary(ctx context.Context, ss grpc.ServerStream, conn grpc.ClientConnInterface, method string) error {
	req, err := recvOne(ss)
	if err != nil {
		return err
	}
	var hdr, tr metadata.MD
	reply := new(emptypb.Empty)
	err = conn.Invoke(ctx, method, req, reply, grpc.Header(&hdr), grpc.Trailer(&tr), grpc.ForceCodecV2(relayCodec{}))
	// The headers leave with the reply, or before the status: the client
	// has answered in full by now, so nothing waits on them.
	if len(hdr) > 0 {
		if herr := ss.SetHeader(hdr); herr != nil {
			return herr
		}
	}
	ss.SetTrailer(tr)
	if err != nil {
		return statusOf(err)
	}
	return ss.SendMsg(reply)
}

// relayServerStreaming relays a call of a server-streaming method: the one
// request is sent, and the stream half-closed, before any response is
// relayed, so that no goroutine waits on the caller's side.
func relayServerStreaming(ctx context.Context, ss grpc.ServerStream, conn grpc.ClientConnInterface, method string) error {
	req, err := recvOne(ss)
	if err != nil {
		return err
	}
	cs, err := conn.NewStream(ctx, serverStreamingDesc, method, grpc.ForceCodecV2(relayCodec{}))
	if err != nil {
		return err
	}
	// A failed send shows, with the client's status, on the receives.
	if cs.SendMsg(req) == nil {
		cs.CloseSend()
	}
	return download(ss, cs)
}

// recvOne receives the one request of a method without client streams
// and the caller's half-close after it, with the errors a gRPC server
// gives a caller that sends none or more than one.
func recvOne(ss grpc.ServerStream) (*emptypb.Empty, error) {
	req := new(emptypb.Empty)
	if err := ss.RecvMsg(req); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, status.Error(codes.Internal, "brpc gateway: cardinality violation: received no request message from non-client-streaming RPC")
		}
		return nil, err
	}
	switch err := ss.RecvMsg(new(emptypb.Empty)); {
	case errors.Is(err, io.EOF):
		return req, nil
	case err != nil:
		return nil, err
	}
	return nil, status.Error(codes.Internal, "brpc gateway: cardinality violation: received multiple request messages for non-client-streaming RPC")
}

// target reads the client's ID from the call's headers: exactly one
// non-empty value.
func target(in metadata.MD, header string) (string, error) {
	vals := in.Get(header)
	switch {
	case len(vals) == 0:
		return "", status.Errorf(codes.InvalidArgument, "brpc gateway: the %q header names no client", header)
	case len(vals) > 1:
		return "", status.Errorf(codes.InvalidArgument, "brpc gateway: the %q header names %d clients, want one", header, len(vals))
	case vals[0] == "":
		return "", status.Errorf(codes.InvalidArgument, "brpc gateway: the %q header is empty", header)
	}
	return vals[0], nil
}

// authorize runs the application's authorizer. A refusal keeps its status;
// one that carries none (or says OK) becomes PermissionDenied, and a panic
// becomes Internal rather than taking the process down.
func authorize(ctx context.Context, fn func(context.Context, string, string) error, id, method string) (err error) {
	if fn == nil {
		return status.Error(codes.PermissionDenied, "brpc gateway: no authorizer, every call is refused")
	}
	defer func() {
		if r := recover(); r != nil {
			err = status.Errorf(codes.Internal, "brpc gateway: the authorizer panicked: %v", r)
		}
	}()
	aerr := fn(ctx, id, method)
	if aerr == nil {
		return nil
	}
	if st, ok := status.FromError(aerr); ok && st.Code() != codes.OK {
		return st.Err()
	}
	return status.Errorf(codes.PermissionDenied, "brpc gateway: %v", aerr)
}

// hopHeaders are request headers that describe the caller's own hop or
// that grpc-go sets for the next one itself.
var hopHeaders = map[string]bool{
	"content-type":         true,
	"user-agent":           true,
	"te":                   true,
	"connection":           true,
	"keep-alive":           true,
	"host":                 true,
	"grpc-timeout":         true,
	"grpc-encoding":        true,
	"grpc-accept-encoding": true,
}

// forwardable makes in, the caller's metadata, into what the client
// receives: everything but pseudo-headers, hop-by-hop and gRPC transport
// headers, the target header and, unless pass, the other reserved ones.
// It deletes those from in and returns it, so in must be the relay's own
// (metadata.FromIncomingContext's copy): the caller's headers are copied
// once per call, not twice. The deadline travels as the outgoing
// context's.
func forwardable(in metadata.MD, conf Config, pass bool) metadata.MD {
	if in == nil {
		return metadata.MD{}
	}
	for k := range in {
		if strings.HasPrefix(k, ":") || hopHeaders[k] || k == conf.TargetHeader ||
			(!pass && conf.ReservedPrefix != "" && strings.HasPrefix(k, conf.ReservedPrefix)) {
			delete(in, k)
		}
	}
	return in
}

// addCaller sets the caller headers of md, the relayed call's metadata,
// to principal and addr, unless a trusted origin's (pass) are there.
func addCaller(md metadata.MD, conf Config, pass bool, principal, addr string) {
	if conf.CallerHeader == "" || (pass && len(md[conf.CallerHeader]) > 0) {
		return
	}
	md[conf.CallerHeader] = []string{EncodeValue(principal)}
	if conf.CallerAddrHeader != "" {
		md[conf.CallerAddrHeader] = []string{addr}
	}
}

// upload relays the caller's messages to the client and half-closes the
// client's stream when the caller has. It stops at the first failure on
// either side. A failed send means the client's call is over, and download
// reports how. A failed receive means the caller's stream is over: grpc-go
// has written that failure's status to the caller itself (a message above
// the gateway server's limit is ResourceExhausted) or the caller went away,
// and either ends the handler's context and so the client's call.
func upload(ss grpc.ServerStream, cs grpc.ClientStream) {
	for {
		m := new(emptypb.Empty)
		if err := ss.RecvMsg(m); err != nil {
			if errors.Is(err, io.EOF) {
				cs.CloseSend()
			}
			return
		}
		if err := cs.SendMsg(m); err != nil {
			return
		}
	}
}

// download relays the client's response headers, messages and trailers
// to the caller and returns the client's status.
func download(ss grpc.ServerStream, cs grpc.ClientStream) error {
	// Header waits for the client's response headers, or the call's end
	// when it answers with trailers only; then RecvMsg reports that end.
	if hdr, err := cs.Header(); err == nil && len(hdr) > 0 {
		if err := ss.SendHeader(hdr); err != nil {
			return err
		}
	}
	for {
		m := new(emptypb.Empty)
		if err := cs.RecvMsg(m); err != nil {
			ss.SetTrailer(cs.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return statusOf(err)
		}
		if err := ss.SendMsg(m); err != nil {
			return err
		}
	}
}

// statusOf keeps a status error as it is (code, message, details) and
// gives anything else a code.
func statusOf(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Unknown, fmt.Sprintf("brpc gateway: %v", err))
}
