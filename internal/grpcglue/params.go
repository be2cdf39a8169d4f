package grpcglue

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// ConnectParams are the connect parameters of the gRPC connections brpc
// runs over streams of a session (the client's connection to the server and
// the server's to each client). Opening such a connection costs no network
// round trip beyond HTTP/2's preface, and a failed attempt fails at once, so
// retries are quick. grpc-go's 20 s MinConnectTimeout would end an attempt
// whose peer is merely busy (a server calling thousands of clients at once
// waits that long for some prefaces); a dead peer ends the session, and with
// it the attempt, within the keepalive timeout, so the attempt is given much
// longer.
var ConnectParams = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
	MinConnectTimeout: 5 * time.Minute,
}
