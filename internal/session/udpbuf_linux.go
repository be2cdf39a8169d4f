package session

import (
	"net"

	"golang.org/x/sys/unix"
)

// growReceiveBuffer asks for a receive buffer of size bytes on udp. An
// unprivileged process gets at most net.core.rmem_max; a privileged one
// (CAP_NET_ADMIN) may go past it with SO_RCVBUFFORCE. It returns the size
// the kernel reports afterwards (Linux reports twice what was set, as it
// counts its bookkeeping), or 0 if it cannot tell.
func growReceiveBuffer(udp *net.UDPConn, size int) int {
	rc, err := udp.SyscallConn()
	if err != nil {
		return 0
	}
	got := 0
	_ = rc.Control(func(fd uintptr) {
		cur, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
		if err == nil && cur >= 2*size {
			got = cur
			return
		}
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, size)
		if cur, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF); err == nil && cur < 2*size {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
		}
		got, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	})
	return got
}
