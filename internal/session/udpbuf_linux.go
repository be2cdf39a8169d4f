package session

import (
	"net"

	"golang.org/x/sys/unix"
)

// growReceiveBuffer asks for a receive buffer of size bytes on udp. An
// unprivileged process gets at most net.core.rmem_max; a privileged one
// (CAP_NET_ADMIN) may go past it with SO_RCVBUFFORCE. Linux reports twice
// the size that was set (it counts its bookkeeping), hence the 2*size.
func growReceiveBuffer(udp *net.UDPConn, size int) {
	rc, err := udp.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if cur, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF); err == nil && cur >= 2*size {
			return
		}
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, size)
		if cur, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF); err == nil && cur < 2*size {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
		}
	})
}
