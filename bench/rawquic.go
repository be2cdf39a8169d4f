package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/session"
)

// rawALPN keeps the raw reference apart from brpc's protocol.
const rawALPN = "brpc-bench-raw"

// rawQUICConfig is the quic-go configuration brpc's sessions use with their
// default options, so that the reference differs from brpc only by what
// brpc adds above quic-go (windows and keepalive included): its Config
// dials, its ListenConfig listens.
func rawQUICConfig() session.QUICConfig {
	return session.QUICConfig{Settings: session.Settings{
		KeepAlive:          brpc.DefaultKeepaliveInterval,
		IdleTimeout:        brpc.DefaultKeepaliveTimeout,
		MaxIncomingStreams: brpc.DefaultMaxStreamsPerSession,
	}}
}

// rawPair runs a quic-go listener on loopback whose first connection is
// handed to serve, and dials it. done waits for serve and reports its error.
func rawPair(ctx context.Context, ca *certs.CA, serve func(ctx context.Context, conn *quic.Conn) error) (conn *quic.Conn, done func() error, err error) {
	stls, err := serverTLS(ca)
	if err != nil {
		return nil, nil, err
	}
	stls.NextProtos = []string{rawALPN}
	ln, err := quic.ListenAddr("127.0.0.1:0", stls, rawQUICConfig().ListenConfig())
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err == nil {
			err = serve(ctx, c)
		}
		served <- err
	}()
	done = func() error {
		err := <-served
		cancel()
		ln.Close()
		return err
	}
	ctls := clientTLS(ca)
	ctls.NextProtos = []string{rawALPN}
	ctls.ServerName = "localhost"
	conn, err = quic.DialAddr(ctx, ln.Addr().String(), ctls, rawQUICConfig().Config())
	if err != nil {
		cancel()
		done()
		return nil, nil, err
	}
	return conn, done, nil
}

// measureRawQUIC sends size-byte writes on one quic-go stream over loopback
// for warm and then dur, and returns the bytes per second counted from the
// end of the warm-up until the receiver acknowledged the end of the stream.
func measureRawQUIC(ctx context.Context, ca *certs.CA, size int, warm, dur time.Duration) (float64, error) {
	conn, done, err := rawPair(ctx, ca, rawSink)
	if err != nil {
		return 0, err
	}
	rate, err := rawSend(ctx, conn, size, warm, dur)
	conn.CloseWithError(0, "done")
	if serr := done(); err == nil && serr != nil {
		err = fmt.Errorf("receiver: %w", serr)
	}
	return rate, err
}

// measureRawQUICLatency makes warm and then n sequential round trips of a
// size-byte message on one quic-go stream (a 4-byte length, then the
// bytes, echoed back) and returns the median time.
func measureRawQUICLatency(ctx context.Context, ca *certs.CA, size, warm, n int) (time.Duration, error) {
	conn, done, err := rawPair(ctx, ca, rawEcho)
	if err != nil {
		return 0, err
	}
	d, err := rawPingPong(ctx, conn, size, warm, n)
	conn.CloseWithError(0, "done")
	if serr := done(); err == nil && serr != nil {
		err = fmt.Errorf("echo: %w", serr)
	}
	return d, err
}

func rawPingPong(ctx context.Context, conn *quic.Conn, size, warm, n int) (time.Duration, error) {
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	msg := make([]byte, 4+size)
	binary.BigEndian.PutUint32(msg, uint32(size))
	copy(msg[4:], payload(size))
	back := make([]byte, len(msg))
	lat := make([]time.Duration, 0, n)
	for i := 0; i < warm+n; i++ {
		t := time.Now()
		if _, err := st.Write(msg); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(st, back); err != nil {
			return 0, err
		}
		if i >= warm {
			lat = append(lat, time.Since(t))
		}
	}
	slices.Sort(lat)
	return lat[len(lat)/2], nil
}

// rawEcho accepts one stream and echoes length-prefixed messages on it
// until the peer ends it.
func rawEcho(ctx context.Context, conn *quic.Conn) error {
	st, err := conn.AcceptStream(ctx)
	if err != nil {
		return err
	}
	var buf []byte
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(st, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			// The client closes the connection once it is done; the read
			// may report that before the connection's context ends.
			var appErr *quic.ApplicationError
			if conn.Context().Err() != nil || (errors.As(err, &appErr) && appErr.Remote && appErr.ErrorCode == 0) {
				return nil
			}
			return err
		}
		n := int(binary.BigEndian.Uint32(hdr[:]))
		if n > 64<<20 {
			return fmt.Errorf("message of %d bytes", n)
		}
		if cap(buf) < 4+n {
			buf = make([]byte, 4+n)
		}
		buf = buf[:4+n]
		copy(buf, hdr[:])
		if _, err := io.ReadFull(st, buf[4:]); err != nil {
			return err
		}
		if _, err := st.Write(buf); err != nil {
			return err
		}
	}
}

func rawSend(ctx context.Context, conn *quic.Conn, size int, warm, dur time.Duration) (float64, error) {
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return 0, err
	}
	buf := payload(size)
	n, t0, err := sendFor(func() error { _, err := st.Write(buf); return err }, size, warm, dur)
	if err != nil {
		return 0, err
	}
	if err := st.Close(); err != nil {
		return 0, err
	}
	var ack [1]byte
	if _, err := io.ReadFull(st, ack[:]); err != nil {
		return 0, fmt.Errorf("waiting for the receiver: %w", err)
	}
	return float64(n) / time.Since(t0).Seconds(), nil
}

// rawSink accepts one stream, reads it to the end and acknowledges with
// one byte.
func rawSink(ctx context.Context, conn *quic.Conn) error {
	st, err := conn.AcceptStream(ctx)
	if err != nil {
		return err
	}
	buf := make([]byte, 256<<10)
	for {
		_, err := st.Read(buf)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	if _, err := st.Write([]byte{1}); err != nil {
		return err
	}
	st.Close()
	// The sender closes the connection once it has read the byte.
	<-conn.Context().Done()
	return nil
}
