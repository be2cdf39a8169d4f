package greeter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsServer serves the application's Prometheus registry, which brpc's
// collectors (package brpcprom) are registered on, at /metrics.
type metricsServer struct {
	url    string
	http   *http.Server
	served chan error
}

// serveMetrics listens on addr (TCP) and serves reg at /metrics until stop.
func serveMetrics(addr string, reg *prometheus.Registry) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	m := &metricsServer{
		url:    "http://" + ln.Addr().String() + "/metrics",
		http:   &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		served: make(chan error, 1),
	}
	go func() { m.served <- m.http.Serve(ln) }()
	return m, nil
}

// stop lets scrapes in progress finish, for up to shutdownTimeout, and waits
// until the server has stopped.
func (m *metricsServer) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err := m.http.Shutdown(ctx)
	if serr := <-m.served; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
