// Package e2e holds end-to-end tests that run real concord processes,
// each with its member of one embedded etcd cluster, driving the example
// key-value service (examples/kvstore) through its resource agent. They
// need no Docker, and run with `make test`.
package e2e
