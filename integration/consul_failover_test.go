//go:build integration

package integration

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/concordha/concord/backends/consul"
	"github.com/concordha/concord/core"
)

// consulBind makes an agent bind its cluster ports to the container's
// address on the Docker network (a dev agent binds to 127.0.0.1).
const consulBind = `-bind={{ GetInterfaceIP "eth0" }}`

// startConsulPair starts a dev server and a client agent joined to it,
// on a Docker network; it returns the client agent first.
func startConsulPair(t *testing.T) (client, server *container) {
	t.Helper()
	network := newNetwork(t)
	server = startContainer(t, spec{
		Image: consulImage, Name: "consul-server",
		Entrypoint: []string{"/bin/consul"},
		Cmd:        append([]string{"agent", "-dev", "-client=0.0.0.0", consulBind, "-node=server"}, consulAgentArgs()...),
		Port:       "8500/tcp",
		Ready:      consulReady,
		Network:    network,
		Aliases:    []string{"consul-server"},
	})
	client = startContainer(t, spec{
		Image: consulImage, Name: "consul-client",
		Entrypoint: []string{"/bin/consul"},
		Cmd: []string{"agent", "-client=0.0.0.0", consulBind, "-node=client", "-data-dir=/tmp/consul",
			"-retry-join=consul-server", "-retry-interval=1s"},
		Port:    "8500/tcp",
		Ready:   consulReady, // the client agent knows the leader once it joined
		Network: network,
		Aliases: []string{"consul-client"},
	})
	return client, server
}

// TestConsulAgentFailover: a Store given two agents carries on through
// the other when the one it uses dies: reads, writes, its session (whose
// renewals move over before its TTL passes) and its watch, which sees a
// write made after the death without ending.
func TestConsulAgentFailover(t *testing.T) {
	client, server := startConsulPair(t)
	const ttl = 2 * time.Second
	st := newConsul(t, consul.Config{Endpoints: consulEndpoints([]*container{client, server})})
	ctx := testCtx(t, 2*time.Minute)
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	member, err := s.Register(ctx, "failover/members/me", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := st.Watch(wctx, "failover/members/")
	if err != nil {
		t.Fatal(err)
	}
	<-ch

	// SIGKILL: the client agent does not leave the cluster, so Consul
	// keeps its node, to which the session belongs.
	client.Kill(t)
	start := time.Now()
	if got, err := st.Get(ctx, member.Key); err != nil || got.Version != member.Version {
		t.Fatalf("Get(%q) with the first agent dead = %+v, %v", member.Key, got, err)
	}
	other, err := st.Create(ctx, "failover/members/other", []byte("v"))
	if err != nil {
		t.Fatalf("Create with the first agent dead: %v", err)
	}
	t.Logf("read and write through the second agent %v after the first died", time.Since(start).Round(time.Millisecond))

	// The watch sees the write, and the session outlives several TTLs.
	tctx, tcancel := context.WithTimeout(ctx, 3*ttl)
	defer tcancel()
	for seen := false; !seen; {
		select {
		case snap, ok := <-ch:
			if !ok || snap.Err != nil {
				t.Fatalf("Watch ended after the first agent died: open %v, Err %v", ok, snap.Err)
			}
			for _, kv := range snap.KVs {
				seen = seen || kv.Key == other.Key
			}
		case <-tctx.Done():
			t.Fatalf("Watch did not see %q, written after the first agent died", other.Key)
		}
	}
	if err := waitTimer(ctx, s.Done(), 3*ttl); err == nil {
		t.Fatalf("session lost after the first agent died: %v", s.Err())
	}
	if _, err := s.Register(ctx, "failover/members/later", []byte("v")); err != nil {
		t.Errorf("Register %v after the first agent died: %v", time.Since(start).Round(time.Millisecond), err)
	}
	if err := s.Close(ctx); err != nil {
		t.Errorf("Session.Close through the second agent: %v", err)
	}
	if _, err := st.Get(ctx, member.Key); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("Get(%q) after Session.Close: %v, want ErrNotFound", member.Key, err)
	}
}
