// Package examples holds brpc's example programs, one directory each. Users
// copy them out of brpc's module, so they import brpc's public packages only,
// never one under internal/; this package's test checks that for examples/
// and cmd/ alike.
package examples
