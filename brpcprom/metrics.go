// Package brpcprom exports a brpc server's metrics to Prometheus.
//
// Create a Metrics, register it on the application's own registry (nothing
// is registered globally) and give its ServerOptions to brpc.NewServer:
//
//	m := brpcprom.New()
//	reg.MustRegister(m)
//	srv := brpc.NewServer(gs, pb.NewAgentClient, m.ServerOptions()...)
//
// Forward calls (clients calling the server) are the application's
// *grpc.Server's business: instrument it as any gRPC server, for example
// with the standard grpc-ecosystem Prometheus interceptors.
package brpcprom

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
)

// Metrics collects what a brpc server does: clients connected by transport,
// handshakes by result, sessions closed by reason, session durations, and
// reverse calls (server to client) by method and code, and the reverse
// connections that carry them (built on a client's first call, closed after
// brpc.WithReverseIdleTimeout without calls); on a replica of a cluster
// (brpc.WithCluster), calls forwarded to other replicas by replica, method
// and code, stale routes, presence writes and presence failures. It
// implements prometheus.Collector.
type Metrics struct {
	connected   *prometheus.GaugeVec
	handshakes  *prometheus.CounterVec
	closed      *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	calls       *prometheus.CounterVec
	callLatency *prometheus.HistogramVec
	revConns    prometheus.Gauge
	revOpened   prometheus.Counter
	forwarded   *prometheus.CounterVec
	stale       prometheus.Counter
	presWrites  *prometheus.CounterVec
	presErrors  *prometheus.CounterVec
}

// New creates the metrics, all under the "brpc_" prefix.
func New() *Metrics {
	return &Metrics{
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "brpc_connected_clients",
			Help: "Clients connected now.",
		}, []string{"transport"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brpc_handshakes_total",
			Help: "Client handshakes by result: OK, or the gRPC code the client was refused with.",
		}, []string{"transport", "result"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brpc_sessions_closed_total",
			Help: "Client sessions that ended, by reason.",
		}, []string{"transport", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "brpc_session_duration_seconds",
			Help:    "How long client sessions lasted.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10), // 1 s to ~3 days
		}, []string{"transport"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brpc_reverse_calls_total",
			Help: "Calls from the server to its clients, by method and gRPC code.",
		}, []string{"method", "code"}),
		callLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "brpc_reverse_call_duration_seconds",
			Help:    "Duration of calls from the server to its clients, by method and gRPC code.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10), // 100 µs to ~26 s
		}, []string{"method", "code"}),
		revConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "brpc_reverse_connections",
			Help: "Connections open now that carry calls from the server to a client (one per client called lately).",
		}),
		revOpened: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brpc_reverse_connections_opened_total",
			Help: "Connections opened to carry calls from the server to a client.",
		}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brpc_cluster_forwarded_calls_total",
			Help: "Calls for clients of other replicas, forwarded to the replica holding the client, by replica, method and gRPC code.",
		}, []string{"replica", "method", "code"}),
		stale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brpc_cluster_stale_routes_total",
			Help: "Forwarded calls that found their client gone from the replica the presence cache named.",
		}),
		presWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brpc_cluster_presence_writes_total",
			Help: "Records this replica wrote to the cluster's presence, by operation (claim, release).",
		}, []string{"op"}),
		presErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brpc_cluster_presence_errors_total",
			Help: "Presence failures: the presence became unreachable (down), or joining or leaving it failed (error).",
		}, []string{"kind"}),
	}
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.connected, m.handshakes, m.closed, m.duration, m.calls, m.callLatency, m.revConns, m.revOpened,
		m.forwarded, m.stale, m.presWrites, m.presErrors}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

// ServerOptions are the options that feed the metrics: peer events, a
// stats handler on the connections that carry reverse calls, and cluster
// events (which only a server WithCluster has).
func (m *Metrics) ServerOptions() []brpc.ServerOption {
	return []brpc.ServerOption{
		brpc.WithPeerEvents(m.observe),
		brpc.WithGRPCDialOptions(grpc.WithStatsHandler(reverseCalls{m})),
		brpc.WithClusterEvents(m.observeCluster),
	}
}

func (m *Metrics) observeCluster(ev brpc.ClusterEvent) {
	switch ev.Kind {
	case brpc.ClusterForwarded:
		m.forwarded.WithLabelValues(ev.Replica, ev.Method, ev.Code).Inc()
	case brpc.ClusterStaleRoute:
		m.stale.Inc()
	case brpc.ClusterClaim, brpc.ClusterRelease:
		m.presWrites.WithLabelValues(ev.Kind.String()).Inc()
	case brpc.ClusterPresenceDown:
		m.presErrors.WithLabelValues("down").Inc()
	case brpc.ClusterPresenceError:
		m.presErrors.WithLabelValues("error").Inc()
	}
}

func (m *Metrics) observe(ev brpc.PeerEvent) {
	tr := ev.Peer.Transport
	switch ev.Type {
	case brpc.PeerConnected:
		m.handshakes.WithLabelValues(tr, "OK").Inc()
		m.connected.WithLabelValues(tr).Inc()
	case brpc.PeerRejected:
		m.handshakes.WithLabelValues(tr, status.Code(ev.Err).String()).Inc()
	case brpc.PeerDisconnected:
		m.connected.WithLabelValues(tr).Dec()
		m.closed.WithLabelValues(tr, string(ev.Kind)).Inc()
		m.duration.WithLabelValues(tr).Observe(time.Since(ev.Peer.ConnectedAt).Seconds())
	}
}

// reverseCalls is a grpc stats.Handler counting and timing reverse calls
// and counting the connections that carry them.
type reverseCalls struct{ m *Metrics }

type methodKey struct{}

func (h reverseCalls) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, methodKey{}, info.FullMethodName)
}

func (h reverseCalls) HandleRPC(ctx context.Context, s stats.RPCStats) {
	end, ok := s.(*stats.End)
	if !ok {
		return
	}
	method, _ := ctx.Value(methodKey{}).(string)
	code := status.Code(end.Error).String()
	h.m.calls.WithLabelValues(method, code).Inc()
	h.m.callLatency.WithLabelValues(method, code).Observe(end.EndTime.Sub(end.BeginTime).Seconds())
}

func (reverseCalls) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (h reverseCalls) HandleConn(_ context.Context, s stats.ConnStats) {
	switch s.(type) {
	case *stats.ConnBegin:
		h.m.revOpened.Inc()
		h.m.revConns.Inc()
	case *stats.ConnEnd:
		h.m.revConns.Dec()
	}
}
