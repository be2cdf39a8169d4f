package testenv

import "syscall"

// smallSocket shrinks a connection's receive buffer and MSS before it
// connects (TCPRelayOptions.SmallServerSockets).
func smallSocket(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10)
		if serr == nil {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, 1024)
		}
	})
	if err != nil {
		return err
	}
	return serr
}
