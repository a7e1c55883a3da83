// Package recordfix writes concord's records into a store by hand, for
// tests that play a cluster's part (a primary claiming, a node joining,
// an endpoint being published) without running nodes.
package recordfix

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/concordha/concord/core"
)

// Put writes v as JSON at key, creating the key or replacing its current
// value, and returns the record as written.
func Put(t testing.TB, st core.Store, key string, v any) core.KV {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if kv, err := st.Get(ctx, key); err == nil {
		if kv, err = st.CompareAndSwap(ctx, key, b, kv.Version); err != nil {
			t.Fatal(err)
		}
		return kv
	}
	kv, err := st.Create(ctx, key, b)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// Join opens a session (closed when the test ends, if the test has not
// closed it) and registers node's member record under prefix, providing
// services, with the API address APIAddress(node).
func Join(t testing.TB, st core.Store, prefix, node string, services ...string) core.Session {
	t.Helper()
	ctx := context.Background()
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	rec := core.MemberRecord{Node: node, Session: s.ID(), Address: APIAddress(node), Services: map[string]core.ServiceRecord{}}
	for _, svc := range services {
		rec.Services[svc] = core.ServiceRecord{}
	}
	b, _ := json.Marshal(rec)
	if _, err := s.Register(ctx, prefix+"members/"+node, b); err != nil {
		t.Fatal(err)
	}
	return s
}

// APIAddress is the node API address Join gives node.
func APIAddress(node string) string { return node + ".api:7100" }
