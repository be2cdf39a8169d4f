package clustertest

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/brpcetcd"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

func TestMain(m *testing.M) {
	testenv.RunChild(map[string]testenv.Role{"replica": replicaRole, "fleet": fleetRole})
	// An embedded etcd's HTTP servers leave connection goroutines of
	// net/http behind after Close; brpc and brpcetcd use no net/http.
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"),
	)
}

// etcdServer is an etcd in the test process whose loopback ports stay the
// same across a stop and a start, so that clients find it again.
type etcdServer struct {
	t   testing.TB
	cfg *embed.Config
	e   *embed.Etcd
}

func startEtcd(t testing.TB) *etcdServer { return startEtcdSync(t, false) }

// startEtcdSync is startEtcd whose writes reach the disk (fsync) when
// fsync is set, as a production etcd's do.
func startEtcdSync(t testing.TB, fsync bool) *etcdServer {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "clustertest"
	cfg.Dir = t.TempDir()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = !fsync
	setURLs := func(client, peer string) {
		cu, pu := url.URL{Scheme: "http", Host: client}, url.URL{Scheme: "http", Host: peer}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	}
	setURLs("127.0.0.1:0", "127.0.0.1:0")
	s := &etcdServer{t: t, cfg: cfg}
	s.start()
	setURLs(s.e.Clients[0].Addr().String(), s.e.Peers[0].Addr().String())
	t.Cleanup(s.stop)
	return s
}

func (s *etcdServer) start() {
	s.t.Helper()
	e, err := embed.StartEtcd(s.cfg)
	if err != nil {
		s.t.Fatalf("starting etcd: %v", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		e.Close()
		s.t.Fatal("etcd was not ready within 20s")
	}
	s.e = e
}

func (s *etcdServer) stop() {
	if s.e != nil {
		s.e.Close()
		s.e = nil
	}
}

func (s *etcdServer) endpoint() string { return s.cfg.ListenClientUrls[0].Host }

// newEtcdClient connects to etcd at endpoint with grpc's reconnect backoff
// capped at half a second (its default grows to two minutes), so that a
// restarted etcd is found again at once.
func newEtcdClient(endpoint string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
			MinConnectTimeout: 2 * time.Second,
		})},
	})
}

// etcdClient is newEtcdClient for the test itself, closed by its cleanup.
func etcdClient(t testing.TB, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := newEtcdClient(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// fleetCerts are the certificates of one replica: its replica certificate
// (server and client authentication, for the links between replicas), its
// certificate for the clients' listeners, and the CA that trusts both.
type fleetCerts struct {
	replica, server tls.Certificate
	pool            *x509.CertPool
	caPEM           []byte
}

func issueCerts(ca *certs.CA, name string) (fleetCerts, error) {
	rc, err := ca.Replica(name)
	if err != nil {
		return fleetCerts{}, err
	}
	sc, err := ca.Server()
	if err != nil {
		return fleetCerts{}, err
	}
	return fleetCerts{replica: rc, server: sc, pool: ca.Pool, caPEM: ca.CertPEM()}, nil
}

// args encodes the certificates for a child process's arguments.
func (c fleetCerts) args(into map[string]string) error {
	for name, cert := range map[string]tls.Certificate{"replica": c.replica, "server": c.server} {
		key, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
		if err != nil {
			return err
		}
		into[name+"-cert"] = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))
		into[name+"-key"] = string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: key}))
	}
	into["ca"] = string(c.caPEM)
	return nil
}

func certsFromArgs(arg func(string) string) (fleetCerts, error) {
	var c fleetCerts
	var err error
	if c.replica, err = tls.X509KeyPair([]byte(arg("replica-cert")), []byte(arg("replica-key"))); err != nil {
		return c, fmt.Errorf("replica certificate: %v", err)
	}
	if c.server, err = tls.X509KeyPair([]byte(arg("server-cert")), []byte(arg("server-key"))); err != nil {
		return c, fmt.Errorf("server certificate: %v", err)
	}
	c.caPEM = []byte(arg("ca"))
	c.pool = x509.NewCertPool()
	if !c.pool.AppendCertsFromPEM(c.caPEM) {
		return c, errors.New("no CA certificate")
	}
	return c, nil
}

// authByName admits a client under the ID its "name" metadata gives, so
// that a client keeps its ID on whichever replica it connects to.
func authByName(_ context.Context, info brpc.AuthInfo) (string, error) {
	if v := info.Metadata.Get("name"); len(v) == 1 && v[0] != "" {
		return v[0], nil
	}
	return "", errors.New("no name")
}

func allowAll(context.Context, string, string) error { return nil }

const (
	testPrefix = "/clustertest"
	testTTL    = 2 * time.Second
)

// replicaConf says how to build a replica.
type replicaConf struct {
	name   string
	etcd   string // the etcd endpoint
	ttl    time.Duration
	certs  fleetCerts
	events func(brpc.PeerEvent) // also told of every peer event
}

// replica is a brpc server of a cluster on etcd: QUIC and TCP listeners
// for clients, a replica endpoint, and a gateway on a plain listener.
type replica struct {
	name     string
	srv      *brpc.Server[testpb.EchoClient]
	etcd     *clientv3.Client
	presence *brpcetcd.Presence
	targets  map[string]string // transport -> target
	repAddr  string
	gateway  testpb.EchoClient // a plain grpc-go client of the gateway
	log      *eventLog
	served   chan error
	gw       *grpc.Server
	gwConn   *grpc.ClientConn
	gwDone   chan struct{}
	stopOnce sync.Once
	stopErr  error
}

func startReplica(conf replicaConf) (_ *replica, err error) {
	cli, err := newEtcdClient(conf.etcd)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			cli.Close()
		}
	}()
	presence, err := brpcetcd.New(cli, brpcetcd.WithPrefix(testPrefix), brpcetcd.WithTTL(conf.ttl))
	if err != nil {
		return nil, err
	}
	repLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &replica{
		name: conf.name, etcd: cli, presence: presence, targets: map[string]string{},
		repAddr: repLis.Addr().String(), log: newEventLog(conf.events), served: make(chan error, 3),
	}
	gs := grpc.NewServer()
	testpb.RegisterEchoServer(gs, &testenv.Echo{Name: conf.name})
	joined := &joinSignal{Presence: presence, ch: make(chan struct{})}
	r.srv = brpc.NewServer(gs, testpb.NewEchoClient,
		brpc.WithAuthenticator(authByName),
		brpc.WithCluster(brpc.ClusterConfig{
			Replica:   conf.name,
			Presence:  joined,
			Advertise: r.repAddr,
			TLS:       &tls.Config{Certificates: []tls.Certificate{conf.certs.replica}, RootCAs: conf.certs.pool, ClientCAs: conf.certs.pool},
		}),
		brpc.WithPeerEvents(r.log.peer), brpc.WithClusterEvents(r.log.cluster))
	var listeners []brpc.Listener
	for _, tr := range testenv.Transports {
		lis, err := testenv.Listen(tr, "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{conf.certs.server}})
		if err != nil {
			repLis.Close()
			for _, l := range listeners {
				l.Close()
			}
			return nil, err
		}
		listeners = append(listeners, lis)
		r.targets[tr] = tr + "://" + lis.Addr().String()
	}
	gwLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err == nil {
		r.gwConn, err = grpc.NewClient(gwLis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if err != nil {
		repLis.Close()
		for _, l := range listeners {
			l.Close()
		}
		return nil, err
	}
	for _, lis := range listeners {
		go func() { r.served <- r.srv.Serve(lis) }()
	}
	go func() { r.served <- r.srv.ServeReplicas(repLis) }()
	r.gw = grpc.NewServer(grpc.UnknownServiceHandler(r.srv.Gateway(allowAll)))
	r.gwDone = make(chan struct{})
	go func() {
		defer close(r.gwDone)
		r.gw.Serve(gwLis)
	}()
	r.gateway = testpb.NewEchoClient(r.gwConn)
	// Serve joins the cluster first; the replica is ready once it has.
	select {
	case <-joined.ch:
		return r, nil
	case err := <-r.served:
		r.served <- err
		r.stop(false)
		return nil, fmt.Errorf("replica %s did not join: %v", conf.name, err)
	case <-time.After(20 * time.Second):
		r.stop(false)
		return nil, fmt.Errorf("replica %s did not join within 20s", conf.name)
	}
}

// joinSignal is a presence that says when a replica has joined it.
type joinSignal struct {
	brpc.Presence
	once sync.Once
	ch   chan struct{}
}

func (p *joinSignal) Join(ctx context.Context, self brpc.Replica, updates func(brpc.PresenceUpdate)) (brpc.Membership, error) {
	m, err := p.Presence.Join(ctx, self, updates)
	if err == nil {
		p.once.Do(func() { close(p.ch) })
	}
	return m, err
}

// stop stops the replica once (gracefully or not) and returns what its
// Serve calls returned, when not nil.
func (r *replica) stop(graceful bool) error {
	r.stopOnce.Do(func() {
		if graceful {
			r.srv.GracefulStop()
		} else {
			r.srv.Stop()
		}
		var errs []error
		for range 3 {
			if err := <-r.served; err != nil {
				errs = append(errs, err)
			}
		}
		r.gwConn.Close()
		r.gw.Stop()
		<-r.gwDone
		r.etcd.Close()
		r.stopErr = errors.Join(errs...)
	})
	return r.stopErr
}

// newReplica starts a replica in the test process; the test's cleanup
// stops it.
func newReplica(t *testing.T, ca *certs.CA, name, etcd string, events func(brpc.PeerEvent)) *replica {
	t.Helper()
	c, err := issueCerts(ca, name)
	if err != nil {
		t.Fatal(err)
	}
	r, err := startReplica(replicaConf{name: name, etcd: etcd, ttl: testTTL, certs: c, events: events})
	if err != nil {
		t.Fatalf("replica %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := r.stop(false); err != nil {
			t.Errorf("%s: Serve returned %v", name, err)
		}
	})
	return r
}

// eventLog records a replica's peer and cluster events.
type eventLog struct {
	also func(brpc.PeerEvent)
	mu   sync.Mutex
	list []string
	wake chan struct{}
}

func newEventLog(also func(brpc.PeerEvent)) *eventLog {
	return &eventLog{also: also, wake: make(chan struct{}, 1)}
}

func (l *eventLog) add(s string) {
	l.mu.Lock()
	l.list = append(l.list, s)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *eventLog) peer(ev brpc.PeerEvent) {
	if l.also != nil {
		l.also(ev)
	}
	switch ev.Type {
	case brpc.PeerConnected:
		l.add("connected " + ev.Peer.ID)
	case brpc.PeerDisconnected:
		l.add(fmt.Sprintf("disconnected %s %s", ev.Peer.ID, ev.Kind))
	}
}

func (l *eventLog) cluster(ev brpc.ClusterEvent) {
	switch ev.Kind {
	case brpc.ClusterPresenceDown, brpc.ClusterPresenceUp, brpc.ClusterPresenceError:
		l.add(ev.Kind.String())
	}
}

func (l *eventLog) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.list {
		if e == s {
			n++
		}
	}
	return n
}

// waitCount waits until the event s was logged n times.
func (l *eventLog) waitCount(t testing.TB, s string, n int, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for l.count(s) < n {
		select {
		case <-l.wake:
		case <-deadline:
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Fatalf("%q logged %d times within %v, want %d; events: %v", s, l.count0(s), within, n, l.list)
		}
	}
}

func (l *eventLog) count0(s string) int {
	n := 0
	for _, e := range l.list {
		if e == s {
			n++
		}
	}
	return n
}

// clusterPeersOf formats a replica's ClusterPeers for messages.
func clusterPeersOf(r *replica) string {
	var b strings.Builder
	for _, p := range r.srv.ClusterPeers() {
		fmt.Fprintf(&b, "%s@%s ", p.ID, p.Replica)
	}
	return b.String()
}

// waitPeers waits until the replicas' ClusterPeers are want.
func waitPeers(t *testing.T, within time.Duration, want []brpc.ClusterPeer, replicas ...*replica) {
	t.Helper()
	slices.SortFunc(want, func(a, b brpc.ClusterPeer) int { return strings.Compare(a.ID, b.ID) })
	for _, r := range replicas {
		testenv.WaitFor(t, within, r.name+"'s ClusterPeers to be "+fmt.Sprint(want), func() bool {
			return slices.Equal(r.srv.ClusterPeers(), want)
		})
	}
}

func certsPool(caPEM string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(caPEM)) {
		return nil, errors.New("no CA certificate")
	}
	return pool, nil
}

// clientOpts are the dial options of the tests' clients.
func clientOpts(ca *certs.CA, id, answerer string) ([]brpc.DialOption, *grpc.Server) {
	gs := grpc.NewServer()
	testpb.RegisterEchoServer(gs, &testenv.Echo{Name: answerer})
	return []brpc.DialOption{
		brpc.WithTLSConfig(ca.ClientTLS()), brpc.WithServer(gs), brpc.WithMetadata(metadata.Pairs("name", id)),
		// QUIC clients notice a killed replica within the timeout; under
		// -race on a loaded machine a shorter one drops live sessions too.
		brpc.WithKeepalive(500*time.Millisecond, 3*time.Second),
		brpc.WithConnectBackoff(backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond}),
	}, gs
}

// dialClient connects a client named id, whose echo service answers as
// id, to target: one endpoint, or several (comma-separated), among which
// brpc's Dial picks one at random and moves on when it fails. The test's
// cleanup closes it.
func dialClient(t *testing.T, ca *certs.CA, id, target string) *brpc.ClientConn {
	t.Helper()
	opts, gs := clientOpts(ca, id, id)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := brpc.Dial(ctx, target, opts...)
	if err != nil {
		gs.Stop()
		t.Fatalf("Dial %s to %s: %v", id, target, err)
	}
	t.Cleanup(func() {
		cc.Close()
		gs.Stop()
	})
	return cc
}

// endpointList is the target listing the endpoints of transport tr of
// replicas with the given targets, in that order.
func endpointList(tr string, targets ...map[string]string) string {
	var hps []string
	for _, m := range targets {
		hps = append(hps, strings.TrimPrefix(m[tr], tr+"://"))
	}
	return tr + "://" + strings.Join(hps, ",")
}

// connectedTo reports whether cc's session is with the server at one of
// targets' endpoints.
func connectedTo(cc *brpc.ClientConn, targets map[string]string) bool {
	p, ok := cc.ServerPeer()
	if !ok {
		return false
	}
	return targets[p.Transport] == p.Transport+"://"+p.RemoteAddr.String()
}

// stateLog records when a client first left Ready and when it was Ready
// again after that.
type stateLog struct {
	mu          sync.Mutex
	lost, again time.Time
}

func watchStates(t *testing.T, cc *brpc.ClientConn) *stateLog {
	l := &stateLog{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
	})
	go func() {
		defer close(done)
		for s := cc.GetState(); ; s = cc.GetState() {
			l.mu.Lock()
			switch {
			case s != connectivity.Ready && l.lost.IsZero():
				l.lost = time.Now()
			case s == connectivity.Ready && !l.lost.IsZero() && l.again.IsZero():
				l.again = time.Now()
			}
			l.mu.Unlock()
			if !cc.WaitForStateChange(ctx, s) {
				return
			}
		}
	}()
	return l
}

func (l *stateLog) times() (lost, again time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost, l.again
}
