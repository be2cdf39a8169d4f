package brpccmd

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// serveMetrics serves reg, the registry brpc's collectors (package brpcprom)
// are registered on, at http://addr/metrics until stop, which returns once
// the HTTP server has ended. examples/greeter/metrics.go has the same lines,
// so that the example can be copied out of brpc's module.
func serveMetrics(addr string, reg *prometheus.Registry) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		hs.Serve(ln) // returns http.ErrServerClosed once stop closes it
	}()
	return "http://" + ln.Addr().String() + "/metrics", func() { hs.Close(); <-served }, nil
}
