// Package grpcglue runs grpc-go on the streams of a brpc session: a
// net.Listener that feeds accepted streams to a *grpc.Server, the net.Conn
// that grpc-go sees for a stream (whose addresses carry the session it
// belongs to), the transport credentials that report the session's TLS
// state, and the lazily built gRPC connection that carries one side's calls
// to the other.
//
// Whoever opens a stream is the gRPC client on it; whoever accepts it is the
// gRPC server.
package grpcglue
