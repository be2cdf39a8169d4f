// Package clustertest runs brpc clusters on a real etcd: replicas built
// with brpc.WithCluster and a brpcetcd presence, in the test process and in
// child processes, an embedded etcd server, and clients that fail over
// between replicas. Its tests check what docs/cluster.md states about
// failures; TestScale (BRPC_CLUSTER_SCALE=1) measures a fleet of 3,000
// clients and the load it puts on etcd.
package clustertest
