// Package integration holds the tests that need Docker: each store
// backend against a real server in a container (etcd, Consul,
// ZooKeeper), and clusters of real `concord run` processes on those
// servers, through crashes, store restarts, forced session expiry and
// the loss of the store's leader.
//
// Every test file carries the build tag integration, so `go test ./...`
// never runs them. Run them with
//
//	make images        # builds the server images locally
//	make integration
//
// The images are named by CONCORD_ETCD_IMAGE, CONCORD_CONSUL_IMAGE and
// CONCORD_ZOOKEEPER_IMAGE (defaults in containers_test.go). Without a
// reachable Docker daemon the tests skip, unless CONCORD_REQUIRE_DOCKER=1
// makes them fail. Containers are terminated by each test's cleanup
// (TESTCONTAINERS_RYUK_DISABLED=true: no reaper container is started).
//
// Published ports are bound to 127.0.0.1 on a free port chosen when the
// container is created, which stays the same when the container is
// stopped and started again. Against a remote Docker host, set
// TESTCONTAINERS_HOST_OVERRIDE to its address.
package integration
