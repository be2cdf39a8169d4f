//go:build !linux

package session

import (
	"net"
	"time"
)

// setUserTimeout is a no-op where TCP_USER_TIMEOUT does not exist; keepalive
// probes still detect a dead peer on an idle connection.
func setUserTimeout(*net.TCPConn, time.Duration) error { return nil }
