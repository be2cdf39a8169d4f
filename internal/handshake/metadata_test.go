package handshake

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
)

func TestCheckMetadata(t *testing.T) {
	conf := ServerConfig{MaxMetadataValues: 4, MaxMetadataValueSize: 8}
	entry := func(k string, vals ...string) *handshakepb.MetadataEntry {
		e := &handshakepb.MetadataEntry{Key: k}
		for _, v := range vals {
			e.Values = append(e.Values, []byte(v))
		}
		return e
	}
	for _, c := range []struct {
		name    string
		entries []*handshakepb.MetadataEntry
		refused string // part of the refusal's message; "" when admitted
	}{
		{"none", nil, ""},
		{"at the caps", []*handshakepb.MetadataEntry{entry("a", "1", "2"), entry("b", "12345678"), entry("c")}, ""},
		{"too many values", []*handshakepb.MetadataEntry{entry("a", "1", "2", "3"), entry("b", "4", "5")}, "more than 4 values"},
		{"keys without values count", []*handshakepb.MetadataEntry{entry("a"), entry("b"), entry("c"), entry("d"), entry("e")}, "more than 4 values"},
		{"value too long", []*handshakepb.MetadataEntry{entry("a", "123456789")}, "value of 9 bytes"},
		{"key too long", []*handshakepb.MetadataEntry{entry("abcdefghi", "1")}, "key of 9 bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := checkMetadata(c.entries, conf)
			if c.refused == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), c.refused) {
				t.Fatalf("got %v, want ResourceExhausted saying %q", err, c.refused)
			}
		})
	}
	if err := checkMetadata([]*handshakepb.MetadataEntry{entry("a", strings.Repeat("x", 1<<20))}, ServerConfig{}); err != nil {
		t.Fatalf("no caps set, yet refused: %v", err)
	}
}
