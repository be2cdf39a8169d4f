package session

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestListenerGrowsItsReceiveBuffer checks that a QUIC listener's socket
// gets a receive buffer of ListenerReceiveBuffer, or as much of it as the
// system allows (net.core.rmem_max without privileges); the system default
// is a few hundred KiB.
func TestListenerGrowsItsReceiveBuffer(t *testing.T) {
	raw, err := os.ReadFile("/proc/sys/net/core/rmem_max")
	if err != nil {
		t.Skipf("cannot read net.core.rmem_max: %v", err)
	}
	rmemMax, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	l, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	rc, err := l.udp.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	}); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	// Linux reports twice the size that was set.
	if want := 2 * min(ListenerReceiveBuffer, rmemMax); got < want {
		t.Fatalf("listener receive buffer: %d bytes, want at least %d (rmem_max %d)", got, want, rmemMax)
	}
	t.Logf("listener receive buffer: %d bytes reported (rmem_max %d)", got, rmemMax)
}
