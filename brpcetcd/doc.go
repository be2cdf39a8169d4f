// Package brpcetcd keeps a brpc cluster's presence in etcd.
package brpcetcd
