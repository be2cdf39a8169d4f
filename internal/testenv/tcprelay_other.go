//go:build !linux

package testenv

import "syscall"

// smallSocket leaves the socket as it is: shrinking the MSS is Linux's
// (TCPRelayOptions.SmallServerSockets).
func smallSocket(_, _ string, _ syscall.RawConn) error { return nil }
