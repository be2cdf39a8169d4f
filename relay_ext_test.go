package brpc_test

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// udpRelay forwards datagrams between one client and a server on loopback.
// Blackhole makes it drop everything from then on, in both directions: to
// each side the other has vanished without a word.
type udpRelay struct {
	front    *net.UDPConn // the client talks to this
	back     *net.UDPConn // this talks to the server
	dropping atomic.Bool
	client   atomic.Pointer[net.UDPAddr]
	wg       sync.WaitGroup
}

func newUDPRelay(t *testing.T, server string) *udpRelay {
	t.Helper()
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	sa, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.DialUDP("udp", nil, sa)
	if err != nil {
		t.Fatal(err)
	}
	r := &udpRelay{front: front, back: back}
	r.wg.Add(2)
	go r.pump(func(b []byte) (int, error) {
		n, from, err := front.ReadFromUDP(b)
		if err == nil {
			r.client.Store(from)
		}
		return n, err
	}, func(b []byte) { back.Write(b) })
	go r.pump(back.Read, func(b []byte) {
		if c := r.client.Load(); c != nil {
			front.WriteToUDP(b, c)
		}
	})
	t.Cleanup(r.close)
	return r
}

func (r *udpRelay) pump(read func([]byte) (int, error), write func([]byte)) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := read(buf)
		if err != nil {
			return
		}
		if !r.dropping.Load() {
			write(buf[:n])
		}
	}
}

// Addr is where clients should dial.
func (r *udpRelay) Addr() string { return r.front.LocalAddr().String() }

// Blackhole drops every datagram from now on.
func (r *udpRelay) Blackhole() { r.dropping.Store(true) }

func (r *udpRelay) close() {
	r.front.Close()
	r.back.Close()
	r.wg.Wait()
}
