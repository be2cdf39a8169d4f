package brpcetcd

import "github.com/prometheus/client_golang/prometheus"

// Collector returns a prometheus.Collector of the presence's Stats, for the
// application's own registry (nothing is registered globally):
//
//	brpc_presence_txns_total          write transactions committed
//	brpc_presence_ops_total           record operations in them
//	brpc_presence_txn_ops_max         the most operations in one transaction
//	brpc_presence_etcd_errors_total   etcd calls that failed
//	brpc_presence_downs_total         times a membership reported Down
//	brpc_presence_snapshots_total     full reads of the records
//	brpc_presence_watch_events_total  watch events received
//	brpc_presence_pending_ops         operations waiting to be written
//	brpc_presence_client_records      client records known
func (p *Presence) Collector() prometheus.Collector {
	return &collector{p: p}
}

var (
	descTxns      = prometheus.NewDesc("brpc_presence_txns_total", "Presence write transactions etcd committed.", nil, nil)
	descOps       = prometheus.NewDesc("brpc_presence_ops_total", "Presence record operations (claims, restores, releases, replica records) written.", nil, nil)
	descTxnOpsMax = prometheus.NewDesc("brpc_presence_txn_ops_max", "The most operations one presence transaction carried.", nil, nil)
	descErrors    = prometheus.NewDesc("brpc_presence_etcd_errors_total", "etcd calls of the presence that failed.", nil, nil)
	descDowns     = prometheus.NewDesc("brpc_presence_downs_total", "Times a membership lost etcd and reported the presence down.", nil, nil)
	descSnapshots = prometheus.NewDesc("brpc_presence_snapshots_total", "Full reads of the presence records (joins, recoveries, compacted watches).", nil, nil)
	descEvents    = prometheus.NewDesc("brpc_presence_watch_events_total", "Presence watch events received from etcd.", nil, nil)
	descPending   = prometheus.NewDesc("brpc_presence_pending_ops", "Presence operations waiting to be written.", nil, nil)
	descRecords   = prometheus.NewDesc("brpc_presence_client_records", "Client records the presence knows of.", nil, nil)
)

type collector struct{ p *Presence }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTxns, descOps, descTxnOpsMax, descErrors, descDowns, descSnapshots, descEvents, descPending, descRecords} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.p.Stats()
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter(descTxns, s.Txns)
	counter(descOps, s.Ops)
	gauge(descTxnOpsMax, float64(s.MaxTxnOps))
	counter(descErrors, s.Errors)
	counter(descDowns, s.Downs)
	counter(descSnapshots, s.Snapshots)
	counter(descEvents, s.Events)
	gauge(descPending, float64(s.Pending))
	gauge(descRecords, float64(s.Records))
}
