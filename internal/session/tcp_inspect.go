package session

import (
	"encoding/binary"
	"io"
	"sync"
	"sync/atomic"

	"github.com/brpc-go/brpc/internal/muxtls"
)

// yamux frame types and flags beyond muxtls's header layout
// (hashicorp/yamux spec.md).
const (
	yamuxTypeWindowUpdate = 1
	yamuxTypePing         = 2
	yamuxFlagSYN          = 1
	yamuxFlagACK          = 2
)

// maxUnansweredPings is how many of the peer's pings may wait for their
// answer at once. yamux answers each ping from a goroutine of its own that
// holds a timer for up to the write timeout when the peer does not read, so
// a ping flood from a peer that never reads would cost the server hundreds
// of bytes per 12-byte ping; brpc's own peers ping one at a time.
const maxUnansweredPings = 16

// yamuxInitialWindow is the receive window yamux's protocol gives every new
// stream: what a peer may send on a stream before the other side reads it.
const yamuxInitialWindow = 256 << 10

// frameInspector sits on the read side of a listener's TCP session, between
// TLS and yamux, and follows the yamux frames the peer sends, so that what
// brpc's protocol forbids never reaches yamux's buffers:
//   - before the session is admitted, the peer may open one stream (the
//     control stream, the first it opens); the SYN of a second one fails the
//     connection, since yamux would keep up to 256 KiB for it that nobody
//     reads;
//   - before admission, the control stream may carry at most limit bytes
//     (the hello, or yamux's initial window if larger); yamux opens its
//     window to MaxStreamWindowSize as soon as the server reads, which
//     would let the peer park megabytes there while the server
//     authenticates it;
//   - after admission, the control stream carries nothing from the peer
//     (in protocol v1 the client sends nothing after its hello) and data
//     there fails the connection: nothing reads it, so yamux would keep it
//     for the session's life;
//   - at any time, at most maxUnansweredPings of the peer's pings may wait
//     for yamux's answer, which the inspector sees go out on its write side.
//
// Failing the connection means Read returns a localCloseError with
// CodeProtocol and a reason, now and on every later Read: yamux's receive
// loop ends and closes the connection. fail, once set, makes that error the
// cause of the session's end before Read returns it, so the session's
// Ending (a close by this side with CodeProtocol and the reason) is decided
// before yamux wakes any stream reader with the session's shutdown, and
// what sees a stream fail reads the right Ending. Only yamux's receive loop
// reads, so the parsing state needs no lock; admitted is set from the
// handshake's goroutine.
type frameInspector struct {
	io.ReadWriteCloser
	limit    int64 // control stream bytes allowed before admission
	admitted atomic.Bool

	in      frameScanner
	ctrlID  uint32 // 0: no stream opened yet
	ctrlLen int64  // data bytes the control stream carried before admission
	err     error

	pings atomic.Int64 // the peer's pings not answered yet
	out   frameScanner // what yamux writes; only its send loop writes

	// syns counts the streams the peer opened after admission (the control
	// stream is the handshake's); opened, once set, is called after each.
	syns   atomic.Int64
	opened atomic.Pointer[func()]

	failMu  sync.Mutex
	fail    func(error) // nil until the session exists
	failErr error       // a violation seen before fail was set
}

// newFrameInspector allows the control stream limit bytes before
// admission, and never less than yamux's initial window: a peer may send
// that much before the server reads at all, and the server must be able to
// read a hello's length prefix and refuse it with a status when it is too
// large.
func newFrameInspector(rwc io.ReadWriteCloser, limit int) *frameInspector {
	return &frameInspector{ReadWriteCloser: rwc, limit: int64(max(limit, yamuxInitialWindow))}
}

func (fi *frameInspector) Read(p []byte) (int, error) {
	if fi.err != nil {
		return 0, fi.err
	}
	n, err := fi.ReadWriteCloser.Read(p)
	if verr := fi.inspect(p[:n]); verr != nil {
		fi.err = verr
		fi.report(verr)
		return 0, verr
	}
	return n, err
}

// Write counts the answers to the peer's pings as yamux sends them.
func (fi *frameInspector) Write(p []byte) (int, error) {
	fi.out.scan(p, func(hdr []byte) error {
		if hdr[1] == yamuxTypePing && binary.BigEndian.Uint16(hdr[2:4])&yamuxFlagACK != 0 {
			fi.pings.Add(-1)
		}
		return nil
	})
	return fi.ReadWriteCloser.Write(p)
}

// frameScanner follows the frames of one direction of a yamux session.
type frameScanner struct {
	hdr    [muxtls.YamuxHeaderSize]byte
	hdrLen int    // bytes of hdr filled
	body   uint32 // data bytes left in the current frame
}

// scan follows the frames in b, the next bytes of the stream, and calls
// frame with the header of each.
func (fs *frameScanner) scan(b []byte, frame func(hdr []byte) error) error {
	for len(b) > 0 {
		if fs.body > 0 {
			k := min(uint32(len(b)), fs.body)
			fs.body -= k
			b = b[k:]
			continue
		}
		k := copy(fs.hdr[fs.hdrLen:], b)
		fs.hdrLen += k
		b = b[k:]
		if fs.hdrLen < muxtls.YamuxHeaderSize {
			return nil
		}
		fs.hdrLen = 0
		if fs.hdr[1] == muxtls.YamuxTypeData {
			fs.body = binary.BigEndian.Uint32(fs.hdr[8:12])
		}
		if err := frame(fs.hdr[:]); err != nil {
			return err
		}
	}
	return nil
}

// inspect follows the frames in b, the next bytes the peer sent.
func (fi *frameInspector) inspect(b []byte) error {
	return fi.in.scan(b, fi.frame)
}

// frame checks a frame the peer sent.
func (fi *frameInspector) frame(hdr []byte) error {
	typ := hdr[1]
	flags := binary.BigEndian.Uint16(hdr[2:4])
	if typ == yamuxTypePing && flags&yamuxFlagSYN != 0 {
		if fi.pings.Add(1) > maxUnansweredPings {
			return &localCloseError{code: CodeProtocol, reason: "too many pings waiting for their answer"}
		}
		return nil
	}
	if typ != muxtls.YamuxTypeData && typ != yamuxTypeWindowUpdate {
		return nil // ping answer, go away: no body, no stream
	}
	id := binary.BigEndian.Uint32(hdr[4:8])
	length := binary.BigEndian.Uint32(hdr[8:12])
	admitted := fi.admitted.Load()
	if flags&yamuxFlagSYN != 0 {
		switch {
		case fi.ctrlID == 0 && !admitted:
			// A session admitted before its peer opened any stream
			// (no brpc handshake ran on it) has no control stream.
			fi.ctrlID = id
		case !admitted && id != fi.ctrlID:
			return &localCloseError{code: CodeProtocol, reason: "a stream was opened before the welcome"}
		case admitted:
			fi.syns.Add(1)
			if f := fi.opened.Load(); f != nil {
				(*f)()
			}
		}
	}
	if typ != muxtls.YamuxTypeData {
		return nil // a window update's length is a window delta
	}
	if id != fi.ctrlID || length == 0 {
		return nil
	}
	if admitted {
		return &localCloseError{code: CodeProtocol, reason: "data on the control stream after the welcome"}
	}
	fi.ctrlLen += int64(length)
	if fi.ctrlLen > fi.limit {
		return &localCloseError{code: CodeProtocol, reason: "the hello overran its size limit"}
	}
	return nil
}

// setFail gives the inspector the function that records why the session
// ended; a violation seen before is reported at once.
func (fi *frameInspector) setFail(fail func(error)) {
	fi.failMu.Lock()
	fi.fail = fail
	err := fi.failErr
	fi.failMu.Unlock()
	if err != nil {
		fail(err)
	}
}

func (fi *frameInspector) report(err error) {
	fi.failMu.Lock()
	fail := fi.fail
	if fail == nil {
		fi.failErr = err
	}
	fi.failMu.Unlock()
	if fail != nil {
		fail(err)
	}
}

// Admitted: see Session. A dialed session has no inspector.
func (s *tcpSession) Admitted() {
	if s.insp != nil {
		s.insp.admitted.Store(true)
	}
}
