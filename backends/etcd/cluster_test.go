package etcd

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/concordha/concord/backends/etcd/embedded"
	"github.com/concordha/concord/backends/storetest"
	"github.com/concordha/concord/core"
)

// TestConformanceCluster runs the suite against three members, each
// client knowing all of them.
func TestConformanceCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-member cluster is slow")
	}
	servers := startCluster(t, 3)
	storetest.Run(t, storetest.Factory{
		New:  func(t *testing.T) core.Store { return openStore(t, endpoints(servers...)) },
		TTL:  conformanceTTL,
		Root: "/storetest/",
	})
}

// TestClusterMemberStop stops the leader of three members while a Store
// that knows all of them holds a session and a watch: writes carry on
// through the others, the watch follows without being started again, and
// the session, whose TTL outlasts the election, lives on.
func TestClusterMemberStop(t *testing.T) {
	servers := startCluster(t, 3)
	st := openStore(t, endpoints(servers...))
	ctx := ctxFor(t, 2*time.Minute)
	const p = "/cluster/"
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	member, err := s.Register(ctx, p+"member", []byte("me"))
	if err != nil {
		t.Fatal(err)
	}
	w := startWatch(t, st, p)
	want := map[string]string{member.Key: "me"}
	w.until(10*time.Second, "the member key", holds(want))

	leader := leaderOf(t, st, servers)
	t.Logf("stopping member %d, the leader", leader)
	stopped := time.Now()
	if err := servers[leader].Close(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		key := fmt.Sprintf("%sk%d", p, i)
		storetest.Eventually(t, 15*time.Second, "Create after the leader stopped", func() error {
			c, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			_, err := st.Create(c, key, []byte("v"))
			if errors.Is(err, core.ErrExists) {
				return nil // an earlier attempt applied
			}
			return err
		})
		want[key] = "v"
	}
	t.Logf("writes carried on %v after the leader stopped", time.Since(stopped).Round(time.Millisecond))
	w.until(15*time.Second, "the writes after the leader stopped", holds(want))
	if s.Err() != nil {
		t.Fatalf("session lost when the leader stopped: %v", s.Err())
	}
	if _, err := s.Register(ctx, p+"later", []byte("me")); err != nil {
		t.Fatalf("Register after the leader stopped: %v", err)
	}
}

// leaderOf returns the index of the member that leads.
func leaderOf(t *testing.T, st *Store, servers []*embedded.Server) int {
	t.Helper()
	for i, srv := range servers {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		status, err := st.Client().Status(ctx, srv.Endpoints()[0])
		cancel()
		if err != nil {
			t.Fatalf("Status of member %d: %v", i, err)
		}
		if status.Leader == status.Header.MemberId {
			return i
		}
	}
	t.Fatal("no member leads")
	return -1
}

// TestWatchSurvivesLeaderLoss stops two of three members, so that the
// one a watch is connected to loses its leader: etcd ends the watch
// (WithRequireLeader), and the Store keeps watching again until the
// members are back, delivering what changed without an Err.
func TestWatchSurvivesLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-member cluster is slow")
	}
	servers := startCluster(t, 3)
	st := openStore(t, servers[0].Endpoints())
	ctx := ctxFor(t, 2*time.Minute)
	const p = "/leaderless/"
	if _, err := st.Create(ctx, p+"a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	w := startWatch(t, st, p)
	w.until(10*time.Second, "first snapshot", holds(map[string]string{p + "a": "1"}))

	cfgs := []embedded.Config{servers[1].Config(), servers[2].Config()}
	for _, srv := range servers[1:] {
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// Long enough for etcd to give up on the leader and end the watch.
	time.Sleep(6 * testElection)
	select {
	case snap, ok := <-w.ch:
		t.Fatalf("watch delivered %+v (open %v) without a leader", snap, ok)
	default:
	}
	for _, cfg := range cfgs {
		startMember(t, cfg)
	}
	storetest.Eventually(t, 20*time.Second, "Create once the members are back", func() error {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := st.Create(c, p+"b", []byte("1"))
		if errors.Is(err, core.ErrExists) {
			return nil
		}
		return err
	})
	w.until(20*time.Second, "the change once the members are back", holds(map[string]string{p + "a": "1", p + "b": "1"}))
}
