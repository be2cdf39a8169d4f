package gateway

import (
	"context"
	"strings"
	"sync"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// callerKey is the context key of the slot an authorizer names the
// caller's principal in.
type callerKey struct{}

// callerSlot holds the principal an authorizer named. It is sealed once
// the authorizer has returned: a goroutine the authorizer left behind can
// no longer change who the call is for.
type callerSlot struct {
	mu     sync.Mutex
	name   string
	set    bool
	sealed bool
}

// SetCaller names the principal of the gateway call whose authorizer ctx
// was given to. It reports false, and does nothing, when ctx is not an
// authorizer's, or once that authorizer has returned.
func SetCaller(ctx context.Context, principal string) bool {
	slot, ok := ctx.Value(callerKey{}).(*callerSlot)
	if !ok {
		return false
	}
	slot.mu.Lock()
	defer slot.mu.Unlock()
	if slot.sealed {
		return false
	}
	slot.name, slot.set = principal, true
	return true
}

// seal ends the authorizer's chance to name the principal and returns the
// name it set, if it did.
func (s *callerSlot) seal() (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sealed = true
	return s.name, s.set
}

// principalOf is who the caller's verified TLS certificate says it is:
// the SPIFFE ID of its leaf certificate, else the leaf's subject common
// name. A caller without a certificate that verified against the
// gateway's trust (no client auth, or one that only asked for a
// certificate) is anonymous: "".
func principalOf(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.PeerCertificates) == 0 {
		return ""
	}
	if id := spiffeID(info); id != "" {
		return id
	}
	return info.State.PeerCertificates[0].Subject.CommonName
}

// spiffeID is the SPIFFE ID of the caller's leaf certificate, as grpc-go's
// TLS credentials found it or, for credentials that do not fill it in,
// the leaf's one URI SAN when that is a spiffe:// URI.
func spiffeID(info credentials.TLSInfo) string {
	if info.SPIFFEID != nil {
		return info.SPIFFEID.String()
	}
	uris := info.State.PeerCertificates[0].URIs
	if len(uris) == 1 && uris[0].Scheme == "spiffe" && uris[0].Host != "" {
		return uris[0].String()
	}
	return ""
}

// addrOf is the caller's network address as the gateway's server sees it.
func addrOf(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// EncodeValue makes s a valid value of a text header: a principal may be
// any string (a certificate's common name may hold UTF-8, an authorizer's
// name anything), but a text header carries only printable ASCII. Bytes
// outside it, and '%' itself, become %XX, as in grpc-message; a principal
// of printable ASCII without '%' is sent as it is.
func EncodeValue(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c > '~' || c == '%' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c > '~' || c == '%' {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// DecodeValue undoes EncodeValue. A '%' not followed by two hex digits
// stays as it is.
func DecodeValue(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			hi, ok1 := unhex(s[i+1])
			lo, ok2 := unhex(s[i+2])
			if ok1 && ok2 {
				b.WriteByte(hi<<4 | lo)
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
