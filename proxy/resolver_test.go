package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/concordha/concord/backends/memory"
	"github.com/concordha/concord/client"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/poll"
	"github.com/concordha/concord/internal/recordfix"
)

// TestResolverSource: a proxy fed from the store, through the client
// package, follows the primary's published endpoint: it forwards to the
// first primary, then, once a new primary claims and publishes, closes
// the old connections and forwards to the new one; it holds while the
// new one has not published yet.
func TestResolverSource(t *testing.T) {
	srv := memory.New(memory.Options{})
	defer srv.Close()
	st := srv.Client("t")
	ctx := context.Background()
	write := func(key string, v any) core.KV { return recordfix.Put(t, st, key, v) }
	join := func(node string) core.Session { return recordfix.Join(t, st, "concord/", node, "svc") }
	a, b := startEcho(t, "127.0.0.1:0"), startEcho(t, "127.0.0.1:0")
	sa, sb := join("a"), join("b")
	pa := write("concord/primary/svc", core.PrimaryRecord{Node: "a", Session: sa.ID(), Epoch: 1})
	write("concord/endpoints/svc", core.EndpointRecord{Node: "a", Session: sa.ID(), Address: a.addr(), Epoch: 1, Token: pa.Revision})

	r, err := client.New(st, "concord/")
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Service: "svc", Listen: "127.0.0.1:0", Source: ResolverSource{Resolver: r, Service: "svc"}, HoldTimeout: 5 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(rctx) }()
	defer func() { cancel(); <-done }()
	run := &running{p: p}
	poll.Eventually(t, waitFor, "forwarding to a", func() error {
		if u := p.Current(); !u.Valid || u.Endpoint.Addr != a.addr() {
			return errNotYet(u)
		}
		return nil
	})
	old := run.dial(t)
	roundTrip(t, old, "to a")

	// b claims: until it publishes, new connections are held.
	pb := write("concord/primary/svc", core.PrimaryRecord{Node: "b", Session: sb.ID(), Epoch: 2})
	poll.Eventually(t, waitFor, "no valid primary while b has not published", func() error {
		if u := p.Current(); u.Valid {
			return errNotYet(u)
		}
		return nil
	})
	write("concord/endpoints/svc", core.EndpointRecord{Node: "b", Session: sb.ID(), Address: b.addr(), Epoch: 2, Token: pb.Revision})
	poll.Eventually(t, waitFor, "forwarding to b", func() error {
		if u := p.Current(); !u.Valid || u.Endpoint.Addr != b.addr() {
			return errNotYet(u)
		}
		return nil
	})
	roundTrip(t, run.dial(t), "to b")
	poll.Eventually(t, waitFor, "the connection to a closed", func() error {
		if echo(old, []byte("x")) == nil {
			return errNotYet(p.Current())
		}
		return nil
	})
}

func errNotYet(u Update) error {
	return fmt.Errorf("current state: %v, valid %v, %s", u.Endpoint, u.Valid, u.Why)
}
