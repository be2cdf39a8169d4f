package grpcglue

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/brpc-go/brpc/internal/testpb"
)

// frameTap parses the HTTP/2 frames written on its conn (the client's
// preface first) and counts what the window tests look at.
type frameTap struct {
	net.Conn

	mu             sync.Mutex
	buf            []byte
	prefaceSkipped bool
	pings          int    // PING frames that are not acknowledgements
	initialWindow  uint32 // SETTINGS_INITIAL_WINDOW_SIZE last sent; 0: never
}

const (
	h2FrameHeader       = 9
	h2FramePing         = 0x6
	h2FrameSettings     = 0x4
	h2FlagAck           = 0x1
	h2SettingInitWindow = 0x4
)

func (f *frameTap) Write(p []byte) (int, error) {
	f.mu.Lock()
	f.buf = append(f.buf, p...)
	if !f.prefaceSkipped && len(f.buf) >= len(http2Preface) {
		f.buf = f.buf[len(http2Preface):]
		f.prefaceSkipped = true
	}
	for f.prefaceSkipped && len(f.buf) >= h2FrameHeader {
		n := int(f.buf[0])<<16 | int(f.buf[1])<<8 | int(f.buf[2])
		if len(f.buf) < h2FrameHeader+n {
			break
		}
		typ, flags, body := f.buf[3], f.buf[4], f.buf[h2FrameHeader:h2FrameHeader+n]
		switch {
		case typ == h2FramePing && flags&h2FlagAck == 0:
			f.pings++
		case typ == h2FrameSettings && flags&h2FlagAck == 0:
			for i := 0; i+6 <= len(body); i += 6 {
				if binary.BigEndian.Uint16(body[i:]) == h2SettingInitWindow {
					f.initialWindow = binary.BigEndian.Uint32(body[i+2:])
				}
			}
		}
		f.buf = f.buf[h2FrameHeader+n:]
	}
	f.mu.Unlock()
	return f.Conn.Write(p)
}

func (f *frameTap) counts() (pings int, initialWindow uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pings, f.initialWindow
}

const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// tappedRoute serves the echo service on a pipe and returns a route of s
// to it whose connection's writes, the SharedConn's frames, go through a
// frameTap.
func tappedRoute(t *testing.T, s *SharedConn) (*Route, func() *frameTap) {
	t.Helper()
	pipe, info := serveEchoOnPipe(t, "c", func(conn net.Conn) net.Conn { return conn })
	var (
		mu  sync.Mutex
		tap *frameTap
	)
	r, err := s.NewRoute(func(ctx context.Context) (net.Conn, error) {
		conn, err := pipe.DialContext(ctx)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		defer mu.Unlock()
		tap = &frameTap{Conn: conn}
		return NewStreamConn(tap, info), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, func() *frameTap {
		mu.Lock()
		defer mu.Unlock()
		return tap
	}
}

// TestSharedConnStaticWindows: a SharedConn's connections announce static
// receive windows and so send no BDP pings, which would cost every call to
// a quiet client a PING and its answer; the application's dial options
// still set the windows.
func TestSharedConnStaticWindows(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []grpc.DialOption
		want uint32
	}{
		{"default", nil, ReverseStreamWindow},
		{"application's window", []grpc.DialOption{grpc.WithInitialWindowSize(1 << 20), grpc.WithInitialConnWindowSize(8 << 20)}, 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSharedConn(tc.opts)
			defer s.Close()
			r, tap := tappedRoute(t, s)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for i := range 3 {
				if _, err := testpb.NewEchoClient(r).Unary(ctx, &testpb.EchoRequest{Payload: make([]byte, 16)}); err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
			}
			pings, window := tap().counts()
			if pings != 0 {
				t.Errorf("the reverse connection sent %d PING frames for 3 calls, want none (BDP estimation is on)", pings)
			}
			if window != tc.want {
				t.Errorf("the reverse connection announced an initial stream window of %d, want %d", window, tc.want)
			}
		})
	}
}
