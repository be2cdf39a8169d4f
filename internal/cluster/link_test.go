package cluster

import (
	"bytes"
	"context"
	"net"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/grpcglue"
	"github.com/brpc-go/brpc/internal/muxtls"
	"github.com/brpc-go/brpc/internal/wiretest"
)

// TestLinkWriteStack runs a link between two replicas over TCP, both ends
// built by the code that builds them (remote.startLink, Cluster.handshake),
// and checks what reaches each end's socket. yamux writes a data frame as
// a header and a body: each small data frame must reach the socket as one
// TLS record, and a 64 KiB frame's records in one write.
func TestLinkWriteStack(t *testing.T) {
	c := newTestCluster(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h2 := grpcglue.NewListener(ln.Addr())
	defer h2.Close()
	served := make(chan *wiretest.Recorder, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		raw, err := ln.Accept()
		if err != nil {
			served <- nil
			return
		}
		rec := &wiretest.Recorder{Conn: raw}
		served <- rec
		c.handshake(rec, h2)
		raw.Close()
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	dialer := &wiretest.Recorder{Conn: raw}
	rm := &remote{c: c, name: "peer", addr: ln.Addr().String()}
	l, err := rm.startLink(context.Background(), dialer)
	if err != nil {
		raw.Close()
		t.Fatalf("startLink: %v", err)
	}
	defer func() {
		l.sess.Close()
		<-done
	}()
	listener := <-served
	if listener == nil {
		t.Fatal("the listener accepted no connection")
	}

	// checkSmall fails when a data frame's body reached a socket in a
	// record of its own: every record holds at least a frame header.
	checkSmall := func(side string, writes [][]byte) {
		t.Helper()
		for _, w := range writes {
			for _, n := range wiretest.TLSPlaintexts(t, w) {
				if n < muxtls.YamuxHeaderSize {
					t.Errorf("%s: a TLS record of %d plaintext bytes reached the socket: a data frame's body was sent apart from its header", side, n)
				}
			}
		}
	}

	t.Run("small frames: header and body in one record", func(t *testing.T) {
		s, err := l.sess.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		dialer.Record(true)
		listener.Record(true)
		if err := writeRequest(s, "nobody"); err != nil {
			t.Fatal(err)
		}
		if err := readAnswer(s); err != errTunnelNotHere {
			t.Fatalf("tunnel to a client not here: %v, want errTunnelNotHere", err)
		}
		dw, lw := dialer.Record(false), listener.Record(false)
		// The request: 3 bytes and the ID.
		found := false
		for _, w := range dw {
			if sizes := wiretest.TLSPlaintexts(t, w); len(sizes) == 1 && sizes[0] == muxtls.YamuxHeaderSize+3+len("nobody") {
				found = true
			}
		}
		if !found {
			t.Errorf("the request's frame is in no single-record socket write of the dialing side (%d writes)", len(dw))
		}
		checkSmall("dialing side", dw)
		checkSmall("listening side", lw)
	})

	t.Run("64 KiB frame: its records in one write", func(t *testing.T) {
		s, err := l.sess.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		// A request of a version the listener refuses, 64 KiB long: one
		// frame, which the listener answers with a refusal.
		big := bytes.Repeat([]byte{0xff}, 64<<10)
		dialer.Record(true)
		if _, err := s.Write(big); err != nil {
			t.Fatal(err)
		}
		if err := readAnswer(s); status.Code(err) != codes.Unimplemented {
			t.Fatalf("a request of another version: %v, want Unimplemented", err)
		}
		found := false
		var counts []int
		for _, w := range dialer.Record(false) {
			total := 0
			for _, n := range wiretest.TLSPlaintexts(t, w) {
				total += n
			}
			counts = append(counts, total)
			if total == muxtls.YamuxHeaderSize+len(big) {
				found = true
			}
		}
		if !found {
			t.Errorf("no socket write of the dialing side holds the whole 64 KiB frame (plaintext bytes per write: %v): its records went out apart", counts)
		}
	})
}
