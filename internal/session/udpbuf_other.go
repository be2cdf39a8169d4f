//go:build !linux

package session

import "net"

// growReceiveBuffer asks for a receive buffer of size bytes on udp and
// returns 0: the size the system granted is not reported here.
func growReceiveBuffer(udp *net.UDPConn, size int) int {
	_ = udp.SetReadBuffer(size)
	return 0
}
