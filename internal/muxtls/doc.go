// Package muxtls is the write path of yamux over a TLS connection, as brpc's
// TCP sessions and the links between replicas run it: a Joiner on the TLS
// connection sends a yamux data frame's header and body as one TLS record,
// and a Batcher under it sends all the records of a frame with one system
// call. Both ends of a connection build the same stack.
package muxtls
