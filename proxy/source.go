package proxy

import (
	"context"
	"fmt"
	"time"
)

// Endpoint is where a service's primary serves, as its node published it.
type Endpoint struct {
	// Node is the node the primary runs on (for logs).
	Node string
	// Addr is the service's client address, host:port.
	Addr string
	// Epoch is the membership epoch in which the primary was elected.
	Epoch int64
	// Token is the primary's fencing token. It strictly increases from one
	// primary to the next, so the proxy never goes back to a lower one.
	Token int64
}

// samePrimaryAt reports whether e and o name the same primary (token) at
// the same address: connections forwarded to o may stay when e arrives.
func (e Endpoint) samePrimaryAt(o Endpoint) bool {
	return e.Token == o.Token && e.Addr == o.Addr
}

// String describes e for logs.
func (e Endpoint) String() string {
	return fmt.Sprintf("%s on node %q (epoch %d, token %d)", e.Addr, e.Node, e.Epoch, e.Token)
}

// Update is the state of a service as its Source reports it.
type Update struct {
	// Endpoint is the primary's endpoint; meaningful only when Valid.
	Endpoint Endpoint
	// Valid is false when there is no usable primary now: an election
	// runs, the primary is gone, or the source cannot tell because it lost
	// the store and the last primary's session may have ended.
	Valid bool
	// Why says, for logs, why the state is not Valid.
	Why string
	// Draining is set, with Valid false, while the primary in Endpoint
	// hands the service over (a switchover). The proxy holds new
	// connections, and drains those it forwarded to that primary: it
	// closes each once it is at rest, and the rest at the end of Drain
	// (less a margin), before the primary resigns.
	Draining bool
	Drain    time.Duration
}

// Source reports a service's current endpoint.
//
// Updates must deliver the current state first, then every change, in
// order; it may repeat a state. It must stop sending and close the
// channel when ctx ends: the proxy stops reading then and does not wait
// for the close. If the channel closes before ctx ends, the proxy treats
// the state as not valid from then on.
type Source interface {
	Updates(ctx context.Context) <-chan Update
}
