package brpccmd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/brpc-go/brpc"
)

// etcdBuild tells how to run the build of the command that has -etcd.
const etcdBuild = "the etcd-enabled build of the brpc command: from brpc's repository, cd brpcetcd && go run ./cmd/brpc echo-server -replica NAME -etcd HOST:PORT ..."

// joinTimeout bounds a replica's joining the cluster, so that an
// echo-server whose etcd does not answer says so instead of waiting in
// silence.
const joinTimeout = 30 * time.Second

// clusterFlags say whether echo-server runs as a replica of a cluster, and
// how.
type clusterFlags struct {
	replica   string
	etcd      string
	ttl       time.Duration
	listen    string
	advertise string
	certFile  string
	keyFile   string
	caFile    string
}

// clusterFlagNames are the flags that mean something only with -replica.
var clusterFlagNames = []string{"etcd", "etcd-ttl", "replica-addr", "advertise", "replica-cert", "replica-key", "replica-ca"}

func (c *clusterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.replica, "replica", "", "run as the replica of a cluster with this name (unique in the cluster), its presence in -etcd; empty: a server on its own")
	fs.StringVar(&c.etcd, "etcd", "", "with -replica: the etcd endpoints (host:port, comma-separated) that keep the cluster's presence; needs "+etcdBuild)
	fs.DurationVar(&c.ttl, "etcd-ttl", 10*time.Second, "with -replica: the lease TTL of the replica's records in etcd, in whole seconds: a replica that dies is forgotten that long after")
	fs.StringVar(&c.listen, "replica-addr", "127.0.0.1:4490", "with -replica: the TCP address of the replica endpoint, to which the other replicas forward the calls for this replica's clients (mutual TLS)")
	fs.StringVar(&c.advertise, "advertise", "", "with -replica: the host:port at which the other replicas reach the replica endpoint; empty: -replica-addr")
	fs.StringVar(&c.certFile, "replica-cert", "", "with -replica: the replica's certificate (PEM), valid for server and client authentication; without it one is issued from the CA in -certs")
	fs.StringVar(&c.keyFile, "replica-key", "", "the replica's key (PEM), with -replica-cert")
	fs.StringVar(&c.caFile, "replica-ca", "", "with -replica-cert: the CA (PEM) of the replicas' certificates; every peer with a certificate from it is taken for a replica")
}

// check reports flags that cannot work together. set tells which flags
// the command line gave; certsDir is -certs.
func (c *clusterFlags) check(set map[string]bool, certsDir string, presence PresenceFunc) error {
	if c.etcd != "" && presence == nil {
		return &badInput{"-etcd: this build of the brpc command has no etcd (brpc's module never requires it); run " + etcdBuild}
	}
	if c.replica == "" {
		for _, name := range clusterFlagNames {
			if set[name] {
				return &badUsage{fmt.Sprintf("-%s goes with -replica", name)}
			}
		}
		return nil
	}
	if c.etcd == "" {
		return &badUsage{"-replica needs -etcd, the etcd endpoints that keep the cluster's presence"}
	}
	for _, ep := range strings.Split(c.etcd, ",") {
		if strings.TrimSpace(ep) == "" {
			return &badUsage{fmt.Sprintf("-etcd %q: an empty endpoint", c.etcd)}
		}
	}
	if c.ttl < time.Second || c.ttl%time.Second != 0 {
		return &badUsage{fmt.Sprintf("-etcd-ttl must be a whole number of seconds, at least 1s, not %v", c.ttl)}
	}
	host, _, err := net.SplitHostPort(c.listen)
	if err != nil {
		return &badUsage{fmt.Sprintf("-replica-addr %q: %v", c.listen, err)}
	}
	if c.advertise != "" {
		if _, _, err := net.SplitHostPort(c.advertise); err != nil {
			return &badUsage{fmt.Sprintf("-advertise %q: %v", c.advertise, err)}
		}
	} else if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return &badUsage{fmt.Sprintf("-replica-addr %s listens on every address: say with -advertise at which one the other replicas reach it", c.listen)}
	}
	switch {
	case (c.certFile == "") != (c.keyFile == ""):
		return &badUsage{"-replica-cert and -replica-key go together"}
	case (c.certFile == "") != (c.caFile == ""):
		return &badUsage{"-replica-cert and -replica-ca go together"}
	case c.certFile == "" && certsDir == "":
		return &badUsage{"-replica needs certificates for the links between replicas: -certs DIR (every replica started with the same DIR trusts the others), " +
			"or -replica-cert, -replica-key and -replica-ca"}
	}
	return nil
}

// endpoints lists -etcd's endpoints.
func (c *clusterFlags) endpoints() []string {
	var eps []string
	for _, ep := range strings.Split(c.etcd, ",") {
		eps = append(eps, strings.TrimSpace(ep))
	}
	return eps
}

// replicaSetup is what echo-server needs to run as a replica: its
// endpoint's listener and what WithCluster takes.
type replicaSetup struct {
	lis      net.Listener
	conf     brpc.ClusterConfig
	presence io.Closer
}

// setUpReplica listens for the replica endpoint and opens the presence.
// ca is the CA of -certs, or nil.
func setUpReplica(c clusterFlags, ca *dirCA, open PresenceFunc, joinTimeout time.Duration, joined func(brpc.Replica)) (*replicaSetup, error) {
	lis, err := net.Listen("tcp", c.listen)
	if err != nil {
		return nil, fmt.Errorf("replica endpoint: %w", err)
	}
	advertise := c.advertise
	if advertise == "" {
		// The port the kernel picked, when -replica-addr asked for any.
		advertise = lis.Addr().String()
	}
	tlsConf, err := replicaTLS(c, ca, lis.Addr().String(), advertise)
	if err != nil {
		lis.Close()
		return nil, err
	}
	presence, closer, err := open(c.endpoints(), c.ttl)
	if err != nil {
		lis.Close()
		return nil, fmt.Errorf("opening the presence in etcd at %s: %w", c.etcd, err)
	}
	return &replicaSetup{
		lis: lis,
		conf: brpc.ClusterConfig{
			Replica:   c.replica,
			Presence:  announcedPresence{Presence: presence, timeout: joinTimeout, joined: joined},
			Advertise: advertise,
			TLS:       tlsConf,
		},
		presence: closer,
	}, nil
}

// replicaTLS is the mutual TLS of the links between replicas: from
// -replica-cert and -replica-ca, or issued from the CA in -certs for the
// endpoint's addresses.
func replicaTLS(c clusterFlags, ca *dirCA, listenAddr, advertise string) (*tls.Config, error) {
	if c.certFile != "" {
		cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
		if err != nil {
			return nil, fmt.Errorf("-replica-cert: %w", err)
		}
		pem, err := os.ReadFile(c.caFile)
		if err != nil {
			return nil, fmt.Errorf("-replica-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-replica-ca: no certificate in %s", c.caFile)
		}
		return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool}, nil
	}
	var names []string
	for _, addr := range []string{listenAddr, advertise} {
		host, _, err := net.SplitHostPort(addr)
		if ip := net.ParseIP(host); err != nil || ip != nil && ip.IsUnspecified() {
			continue // "every address" names no host to dial
		}
		names = append(names, host)
	}
	cert, err := ca.issue(names...)
	if err != nil {
		return nil, fmt.Errorf("issuing the replica's certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.pool, ClientCAs: ca.pool}, nil
}

// announcedPresence bounds a replica's joining the cluster and says when
// it has joined.
type announcedPresence struct {
	brpc.Presence
	timeout time.Duration
	joined  func(brpc.Replica)
}

// Join joins within the timeout. A membership lasts until it is left or
// lost, not until the context of the call that made it ends (brpc.Presence,
// Join), so bounding the call bounds only the waiting.
func (p announcedPresence) Join(ctx context.Context, self brpc.Replica, updates func(brpc.PresenceUpdate)) (brpc.Membership, error) {
	jctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	m, err := p.Presence.Join(jctx, self, updates)
	if err != nil {
		if ctx.Err() == nil && errors.Is(jctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("no answer from the presence within %v: %w", p.timeout, err)
		}
		return nil, err
	}
	p.joined(self)
	return m, nil
}

// clusterEventLine says what echo-server prints of a replica's event, or
// "" for an event it keeps quiet (calls forwarded, records written).
func clusterEventLine(ev brpc.ClusterEvent) string {
	switch ev.Kind {
	case brpc.ClusterPresenceDown:
		return fmt.Sprintf("presence unreachable (%v): clients on other replicas cannot be reached, this replica's are still served", ev.Err)
	case brpc.ClusterPresenceUp:
		return "presence reachable again"
	case brpc.ClusterPresenceError:
		return fmt.Sprintf("presence error: %v", ev.Err)
	}
	return ""
}
