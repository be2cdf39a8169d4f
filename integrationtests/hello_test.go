package integrationtests

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
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
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := testenv.New(t, testenv.Config{Transport: tr})
		_, err := e.Dial(testenv.ClientConfig{Name: "many", MD: many})
		testenv.WantCode(t, err, codes.ResourceExhausted, "a hello with more metadata values than the default cap")
		_, err = e.Dial(testenv.ClientConfig{Name: "long", MD: long})
		testenv.WantCode(t, err, codes.ResourceExhausted, "a hello with a metadata value longer than the default cap")
		testenv.CallOK(t, e.Connect(testenv.ClientConfig{Name: "ordinary", MD: metadata.Pairs("site", "a")}), "ordinary")

		raised := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{
			brpc.WithMaxHelloMetadata(2*brpc.DefaultMaxHelloMetadataValues, 2*brpc.DefaultMaxHelloMetadataValueSize),
		}})
		c := raised.Connect(testenv.ClientConfig{Name: "many", MD: metadata.Join(many, long)})
		testenv.CallOK(t, c, "many")
		peers := raised.Srv.Peers()
		if len(peers) != 1 || len(peers[0].Metadata["token"]) != 1 || len(peers[0].Metadata["k0"]) == 0 {
			t.Fatalf("Peers() = %+v, want the client with its metadata", peers)
		}
	})
}
