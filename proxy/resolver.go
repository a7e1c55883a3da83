package proxy

import (
	"context"

	"github.com/concordha/concord/client"
)

// ResolverSource is the Source of a service's endpoint as the client
// package follows it in the store: valid only while the endpoint record
// belongs to the current primary and its session is live, and not valid
// while the store cannot be watched.
type ResolverSource struct {
	Resolver *client.Resolver
	Service  string
}

// Updates implements Source.
func (s ResolverSource) Updates(ctx context.Context) <-chan Update {
	out := make(chan Update)
	in, err := s.Resolver.Watch(ctx, s.Service)
	go func() {
		defer close(out)
		if err != nil {
			select {
			case out <- Update{Why: err.Error()}:
			case <-ctx.Done():
			}
			return
		}
		for u := range in {
			e := u.Endpoint
			select {
			case out <- Update{Valid: u.Valid, Why: u.Why, Draining: u.Draining, Drain: u.Drain,
				Endpoint: Endpoint{Node: e.Node, Addr: e.Address, Epoch: e.Epoch, Token: e.Token}}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}
