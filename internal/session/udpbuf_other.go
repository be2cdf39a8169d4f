//go:build !linux

package session

import "net"

// growReceiveBuffer asks for a receive buffer of size bytes on udp.
func growReceiveBuffer(udp *net.UDPConn, size int) {
	_ = udp.SetReadBuffer(size)
}
