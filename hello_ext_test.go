package brpc_test

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc"
)

// A hello of many tiny metadata values is refused before it is decoded, by
// default; a server that raises the cap admits it, and its peers share one
// copy of the metadata.
func TestHelloMetadataCaps(t *testing.T) {
	many := metadata.MD{}
	for i := range brpc.DefaultMaxHelloMetadataValues + 1 {
		many.Append(fmt.Sprintf("k%d", i%7), "v")
	}
	long := metadata.Pairs("token", strings.Repeat("t", brpc.DefaultMaxHelloMetadataValueSize+1))
	eachTransport(t, func(t *testing.T, tr string) {
		e := newEnv(t, envConfig{transport: tr})
		_, err := e.dial(clientConfig{name: "many", md: many})
		wantCode(t, err, codes.ResourceExhausted, "a hello with more metadata values than the default cap")
		_, err = e.dial(clientConfig{name: "long", md: long})
		wantCode(t, err, codes.ResourceExhausted, "a hello with a metadata value longer than the default cap")
		callOK(t, e.connect(clientConfig{name: "ordinary", md: metadata.Pairs("site", "a")}), "ordinary")

		raised := newEnv(t, envConfig{transport: tr, serverOpts: []brpc.ServerOption{
			brpc.WithMaxHelloMetadata(2*brpc.DefaultMaxHelloMetadataValues, 2*brpc.DefaultMaxHelloMetadataValueSize),
		}})
		c := raised.connect(clientConfig{name: "many", md: metadata.Join(many, long)})
		callOK(t, c, "many")
		peers := raised.srv.Peers()
		if len(peers) != 1 || len(peers[0].Metadata["token"]) != 1 || len(peers[0].Metadata["k0"]) == 0 {
			t.Fatalf("Peers() = %+v, want the client with its metadata", peers)
		}
	})
}
