package cluster

import (
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// remote is the one connection this replica keeps to another replica's
// endpoint, shared by every call forwarded there. A replica that leaves
// retires its connection, which closes once its calls in flight are over:
// a replica that stops gracefully still finishes them.
type remote struct {
	name, addr string
	cc         *grpc.ClientConn

	// Under the Cluster's mu.
	inflight int
	retired  bool
}

// dial builds the connection to a replica endpoint; grpc-go connects on
// the first call, so this does no network I/O.
func (c *Cluster) dial(addr string) (*grpc.ClientConn, error) {
	opts := append(slices.Clone(c.conf.DialOptions), grpc.WithTransportCredentials(credentials.NewTLS(c.dialTLS)))
	return grpc.NewClient("passthrough:///"+addr, opts...)
}

// acquire counts a call on rm; the Cluster's mu is held.
func (rm *remote) acquire() error {
	if rm.retired {
		return status.Errorf(codes.Unavailable, "brpc: replica %q has left the cluster", rm.name)
	}
	rm.inflight++
	return nil
}

// release ends a call counted by acquire, closing a retired connection
// whose last call it was.
func (c *Cluster) release(rm *remote) {
	c.mu.Lock()
	rm.inflight--
	closeNow := rm.retired && rm.inflight == 0 && c.retired[rm]
	if closeNow {
		delete(c.retired, rm)
	}
	c.mu.Unlock()
	if closeNow {
		rm.cc.Close()
	}
}

// retireLocked takes the connection to a replica out of use; it closes now
// or once its last call is over.
func (c *Cluster) retireLocked(name string) {
	rm := c.remotes[name]
	if rm == nil {
		return
	}
	delete(c.remotes, name)
	rm.retired = true
	if rm.inflight > 0 {
		if c.retired == nil {
			c.retired = make(map[*remote]bool)
		}
		c.retired[rm] = true
	} else {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			rm.cc.Close()
		}()
	}
}
