// Package brpc is bidirectional gRPC for Go.
//
// A client dials a server over one multiplexed, encrypted connection (QUIC,
// or TLS over TCP where UDP is blocked),
// calls the server's gRPC services with ordinary protoc-generated stubs, and
// serves gRPC services of its own that the server calls back: agents, devices
// and workers behind NAT that a control plane must reach.
//
// Both directions are plain grpc-go. On the server, NewServer wraps the
// application's *grpc.Server and a stub constructor for the clients' service;
// Serve accepts clients from a Listener made by ListenQUIC or ListenTCP.
// Inside a handler,
// ClientFromContext returns the stub of the calling client; Client(id) and
// Peers reach any connected client from anywhere, and FanOut calls every
// connected client (or those a filter picks) with bounded concurrency, a
// deadline and a result per client. On the client, Dial returns
// a *ClientConn, which is a grpc.ClientConnInterface for the server's stubs,
// and WithServer gives the client's own *grpc.Server to the server. A
// ClientConn reconnects by itself, with backoff, whenever its session ends
// for any reason but Close.
//
// # Identity
//
// Each client is authenticated once per connection by the server's
// Authenticator, which sees the client's hello metadata and its verified TLS
// state and returns the client's ID. The ID is bound to the connection: every
// call carries the session it arrived on in its peer address, so
// ClientFromContext and PeerFromContext answer from the connection, never from
// anything the client sends with a call.
//
// # What grpc-go code sees
//
// Build each *grpc.Server given to NewServer or WithServer with
// grpc.Creds(TransportCredentials()). Its handlers and interceptors then see
// the other end as grpc-go over TLS would: peer.FromContext gives its network
// address (host:port, where its packets come from now) and a
// credentials.TLSInfo with the session's TLS state, the verified certificate
// chain under mTLS. Interceptors, google.golang.org/grpc/authz policies and
// logging written for grpc-go work unchanged. A server built without these
// credentials serves the same calls, with a nil AuthInfo; PeerFromContext
// works either way.
//
// # Gateway and admin service
//
// A server can also let gRPC clients that do not link brpc (grpcurl, other
// languages, scripts) reach its clients: Gateway returns a handler for
// grpc.UnknownServiceHandler on a *grpc.Server of the application's own,
// which relays every call to the client its brpc-target header names, once
// the application's authorizer admits it. RegisterAdmin adds the admin
// service (package adminpb, brpc.admin.v1.Admin), which lists the connected
// clients and streams their connects and disconnects, and
// RegisterGatewayReflection the reflection that lets tools explore both the
// gateway's own services and, with the header, a client's.
// # Clusters
//
// Several servers can share one fleet as replicas of a cluster
// (WithCluster): each client holds a session with one replica, a shared
// Presence records which replica holds which client (NewMemoryPresence in
// one process; github.com/brpc-go/brpc/brpcetcd across processes), and
// Client(id) and Gateway on any replica reach the clients of all of them,
// forwarding calls over mutual TLS to the replica endpoint that
// ServeReplicas serves. ClusterPeers lists every replica's clients;
// docs/cluster.md describes the topology and its failures.
//
// # Errors
//
// Errors at the public boundary are gRPC status errors: codes.Unavailable for
// a peer that has gone or a server that stops, codes.NotFound for an unknown
// client ID, and the Authenticator's code for a refused client.
package brpc
