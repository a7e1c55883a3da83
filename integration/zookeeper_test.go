//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/concordha/concord/backends/storetest"
	"github.com/concordha/concord/backends/zookeeper"
	"github.com/concordha/concord/core"
)

// zkTick is the tick of the test servers: ZooKeeper grants session
// timeouts from 2 to 20 ticks, so 400ms to 4s here.
const zkTick = 200 * time.Millisecond

// zkTTL is the session TTL of the conformance run: go-zookeeper pings
// every TTL/3, and a ping must be answered within 90% of the TTL of its
// sending, on a loaded 2-core machine under -race.
const zkTTL = time.Second

// startZK starts a standalone ZooKeeper with the test tick and no limit
// on connections per client address (they all come from the Docker
// bridge's address, and the suite opens many), plus env; it is ready
// once it serves clients (see zookeeperReady).
func startZK(t testing.TB, env map[string]string) *container {
	t.Helper()
	e := map[string]string{
		"ZOO_TICK_TIME":        strconv.FormatInt(zkTick.Milliseconds(), 10),
		"ZOO_MAX_CLIENT_CNXNS": "0",
	}
	for k, v := range env {
		e[k] = v
	}
	return startZooKeeper(t, e)
}

// openZK returns a Store on endpoint, closed by t's cleanup.
func openZK(t *testing.T, endpoint, digest string) *zookeeper.Store {
	t.Helper()
	st, err := zookeeper.New(zookeeper.Config{Endpoints: []string{endpoint}, Digest: digest, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("zookeeper.New(%s): %v", endpoint, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// rawZK is a plain go-zookeeper client, to look at what the Store wrote.
func rawZK(t *testing.T, endpoint, digest string) *zk.Conn {
	t.Helper()
	c, _, err := zk.Connect([]string{endpoint}, 10*time.Second, zk.WithLogInfo(false), zk.WithLogger(quietZK{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if digest != "" {
		if err := c.AddAuth("digest", []byte(digest)); err != nil {
			t.Fatalf("AddAuth: %v", err)
		}
	}
	return c
}

type quietZK struct{}

func (quietZK) Printf(string, ...any) {}

func zkCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitDone waits, bounded, for s.Done and returns how long it took.
func waitDone(t *testing.T, s core.Session, within time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case <-s.Done():
		return time.Since(start)
	case <-timer.C:
		t.Fatalf("%s: Done of session %s not closed after %v", what, s.ID(), within)
		return 0
	}
}

// TestZooKeeperConformance runs the suite against one real server, with
// the exact list revision that Pzxids make possible.
func TestZooKeeperConformance(t *testing.T) {
	zkc := startZK(t, nil)
	storetest.Run(t, storetest.Factory{
		New:               func(t *testing.T) core.Store { return openZK(t, zkc.Endpoint(), "") },
		TTL:               zkTTL,
		Root:              "/storetest/",
		ExactListRevision: true,
	})
}

// TestZooKeeperDigestACL: with Config.Digest, the znodes the Store
// creates (folders, keys, and keys bound to sessions) carry an ACL for
// that digest identity alone; a client without it, or with another
// password, is refused with core.ErrDenied whatever it does with them.
func TestZooKeeperDigestACL(t *testing.T) {
	zkc := startZK(t, nil)
	const digest = "concord:s3cret"
	ctx := zkCtx(t, 2*time.Minute)
	owner := openZK(t, zkc.Endpoint(), digest)
	kv, err := owner.Create(ctx, "acl/app/k", []byte("v"))
	if err != nil {
		t.Fatalf("Create with the digest: %v", err)
	}
	s, err := owner.NewSession(ctx, core.SessionOptions{TTL: 2 * time.Second})
	if err != nil {
		t.Fatalf("NewSession with the digest: %v", err)
	}
	defer s.Close(context.Background())
	member, err := s.Register(ctx, "acl/app/member", []byte("m"))
	if err != nil {
		t.Fatalf("Register with the digest: %v", err)
	}

	// The ACLs as ZooKeeper holds them.
	raw := rawZK(t, zkc.Endpoint(), digest)
	want := zk.DigestACL(zk.PermAll, "concord", "s3cret")
	for _, p := range []string{"/acl", "/acl/app", "/acl/app/k", "/acl/app/member"} {
		acl, _, err := raw.GetACL(p)
		if err != nil {
			t.Fatalf("GetACL(%s): %v", p, err)
		}
		if len(acl) != 1 || acl[0] != want[0] {
			t.Errorf("ACL of %s = %+v, want only %+v", p, acl, want)
		}
	}

	for _, tc := range []struct{ name, digest string }{{"no credentials", ""}, {"another password", "concord:wrong"}} {
		stranger := openZK(t, zkc.Endpoint(), tc.digest)
		denied := func(call string, err error) {
			t.Helper()
			if !errors.Is(err, core.ErrDenied) {
				t.Errorf("%s: %s: err = %v, want one wrapping core.ErrDenied", tc.name, call, err)
			}
		}
		_, err := stranger.Get(ctx, kv.Key)
		denied("Get", err)
		_, err = stranger.Get(ctx, member.Key)
		denied("Get of a registered key", err)
		_, err = stranger.CompareAndSwap(ctx, kv.Key, []byte("x"), kv.Version)
		denied("CompareAndSwap", err)
		_, err = stranger.Create(ctx, "acl/app/new", []byte("x"))
		denied("Create in a folder of the owner", err)
		_, err = stranger.List(ctx, "acl/app/")
		denied("List", err)
		_, err = stranger.Watch(ctx, "acl/")
		denied("Watch", err)
		ss, err := stranger.NewSession(ctx, core.SessionOptions{TTL: 2 * time.Second})
		if err != nil {
			t.Fatalf("%s: NewSession: %v", tc.name, err)
		}
		_, err = ss.Register(ctx, "acl/app/intruder", []byte("x"))
		denied("Register in a folder of the owner", err)
		_ = ss.Close(ctx)
	}
	// Nothing changed, and the owner still reads it all.
	got, err := owner.Get(ctx, kv.Key)
	if err != nil || string(got.Value) != "v" || got.Version != kv.Version {
		t.Errorf("owner's Get(%q) after the refusals = %+v, %v; want the record as created", kv.Key, got, err)
	}
	snap, err := owner.List(ctx, "acl/app/")
	if err != nil || len(snap.KVs) != 2 {
		t.Errorf("owner's List = %+v, %v; want its 2 keys", snap, err)
	}
}

// TestZooKeeperSessionLostWhileServerDown stops the server for longer
// than the session timeout. The holder declares its session lost while
// the server is down (so before the server could have expired it), and
// never reconnects to it: after the server comes back, having given the
// session a fresh timeout, nothing keeps it alive, and its key goes.
// It also checks that a TTL below the server's minimum is refused.
func TestZooKeeperSessionLostWhileServerDown(t *testing.T) {
	zkc := startZK(t, nil)
	ctx := zkCtx(t, 3*time.Minute)
	holder, observer := openZK(t, zkc.Endpoint(), ""), openZK(t, zkc.Endpoint(), "")

	// 300ms is below minSessionTimeout (2 ticks = 400ms): the server
	// would raise it, and the client would no longer give up first.
	if s, err := holder.NewSession(ctx, core.SessionOptions{TTL: 300 * time.Millisecond}); !errors.Is(err, core.ErrInvalidArgument) {
		if s != nil {
			_ = s.Close(ctx)
		}
		t.Errorf("NewSession(TTL 300ms) with a 400ms minimum: err = %v, want ErrInvalidArgument", err)
	}

	const ttl = 2 * time.Second
	s, err := holder.NewSession(ctx, core.SessionOptions{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	kv, err := s.Register(ctx, "lost/member", []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Err() != nil {
		t.Fatalf("session done before the server stopped: %v", s.Err())
	}

	stopping := time.Now()
	zkc.Stop(t)
	stopped := time.Since(stopping)
	// Done must come within the TTL of the server's last answer, which
	// was before Stop returned; the server, being down, cannot expire
	// anything meanwhile.
	after := waitDone(t, s, ttl+5*time.Second, "server stopped")
	lostAt := stopped + after
	if !errors.Is(s.Err(), core.ErrSessionLost) {
		t.Errorf("Err after the server stopped = %v, want ErrSessionLost", s.Err())
	}
	if lostAt > stopped+ttl {
		t.Errorf("session lost %v after Stop began (Stop took %v): want at most the TTL %v after the server went away", lostAt, stopped, ttl)
	}
	t.Logf("stop took %v; session lost %v after it began (TTL %v): %v", stopped.Round(time.Millisecond), lostAt.Round(time.Millisecond), ttl, s.Err())
	if _, err := s.Register(ctx, "lost/late", []byte("x")); !errors.Is(err, core.ErrSessionLost) {
		t.Errorf("Register on the lost session: err = %v, want ErrSessionLost", err)
	}

	zkc.Start(t)
	restarted := time.Now()
	// The server restores the session with a fresh timeout. Had the
	// holder reconnected to it, its key would stay; it must go within
	// the TTL (plus the server's tick rounding and slack).
	storetest.Eventually(t, 2*ttl+5*time.Second, fmt.Sprintf("%q deleted after the restart", kv.Key), func() error {
		got, err := observer.Get(ctx, kv.Key)
		if errors.Is(err, core.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("Get = %+v, %v", got, err)
	})
	t.Logf("restored session expired by the server %v after the restart", time.Since(restarted).Round(time.Millisecond))
	if _, err := observer.Get(ctx, "lost/late"); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("Get of the key registered on the lost session: %v, want ErrNotFound", err)
	}
}

// TestZooKeeperRestartKeepsSession restarts the server within the session
// timeout: the session survives, with its key, and keeps working.
func TestZooKeeperRestartKeepsSession(t *testing.T) {
	// The restart of a JVM takes seconds: allow sessions longer than 20
	// ticks.
	zkc := startZK(t, map[string]string{"ZOO_CFG_EXTRA": "maxSessionTimeout=30000"})
	ctx := zkCtx(t, 3*time.Minute)
	holder, observer := openZK(t, zkc.Endpoint(), ""), openZK(t, zkc.Endpoint(), "")
	const ttl = 15 * time.Second
	s, err := holder.NewSession(ctx, core.SessionOptions{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	kv, err := s.Register(ctx, "restart/member", []byte("m"))
	if err != nil {
		t.Fatal(err)
	}

	down := time.Now()
	zkc.Stop(t)
	zkc.Start(t)
	downFor := time.Since(down)
	t.Logf("server down and back within %v (TTL %v)", downFor.Round(time.Millisecond), ttl)
	if downFor > ttl*8/10 {
		t.Fatalf("the restart took %v, too close to the TTL %v for this test to mean anything", downFor, ttl)
	}

	// The session reconnects; a Register may fail while it does.
	var later core.KV
	storetest.Eventually(t, ttl/2, "Register after the restart", func() error {
		if s.Err() != nil {
			t.Fatalf("session lost across a restart shorter than its TTL: %v", s.Err())
		}
		var err error
		later, err = s.Register(ctx, "restart/later", []byte("m2"))
		return err
	})
	if s.Err() != nil {
		t.Fatalf("session lost across a restart shorter than its TTL: %v", s.Err())
	}
	got, err := observer.Get(ctx, kv.Key)
	if err != nil || got.Revision != kv.Revision {
		t.Errorf("Get(%q) after the restart = %+v, %v; want the record registered before", kv.Key, got, err)
	}
	// Both keys belong to the same ZooKeeper session.
	raw := rawZK(t, zkc.Endpoint(), "")
	id, err := strconv.ParseUint(strings.TrimPrefix(s.ID(), "0x"), 16, 64)
	if err != nil {
		t.Fatalf("session ID %q: %v", s.ID(), err)
	}
	for _, k := range []string{kv.Key, later.Key} {
		_, st, err := raw.Get("/" + k)
		if err != nil {
			t.Fatalf("raw Get(/%s): %v", k, err)
		}
		if st.EphemeralOwner != int64(id) {
			t.Errorf("/%s is owned by session 0x%x, want %s", k, st.EphemeralOwner, s.ID())
		}
	}
	if err := s.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
	storetest.Eventually(t, 5*time.Second, "keys deleted after Close", func() error {
		for _, k := range []string{kv.Key, later.Key} {
			if _, err := observer.Get(ctx, k); !errors.Is(err, core.ErrNotFound) {
				return fmt.Errorf("Get(%q): %v", k, err)
			}
		}
		return nil
	})
}
