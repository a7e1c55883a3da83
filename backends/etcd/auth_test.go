package etcd

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/concordha/concord/backends/etcd/embedded"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/netfault"
)

// The users of startAuthServer.
const (
	authPrefix   = "concord/"
	authUser     = "concord"
	authPassword = "concord-secret"
	rootPassword = "root-secret"
)

// startAuthServer starts a member with etcd auth enabled: root, and the
// user concord, whose role may read and write the prefix concord/ and
// nothing else. Sessions need nothing more: granting and renewing a
// lease needs only a valid user, and revoking one needs write permission
// on the keys attached to it. It returns the member and a client
// authenticated as root.
func startAuthServer(t *testing.T) (*embedded.Server, *clientv3.Client) {
	t.Helper()
	srv := startServer(t)
	ctx := ctxFor(t, 30*time.Second)
	admin, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	steps := []func() error{
		func() error { _, err := admin.RoleAdd(ctx, "root"); return err },
		func() error { _, err := admin.UserAdd(ctx, "root", rootPassword); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, authUser); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, authUser, authPrefix, clientv3.GetPrefixRangeEnd(authPrefix), clientv3.PermissionType(authpb.READWRITE))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, authUser, authPassword); return err },
		func() error { _, err := admin.UserGrantRole(ctx, authUser, authUser); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("auth setup, step %d: %v", i, err)
		}
	}
	root, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), Username: "root", Password: rootPassword, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("root client after AuthEnable: %v", err)
	}
	t.Cleanup(func() { _ = root.Close() })
	return srv, root
}

func openAuthStore(t *testing.T, srv *embedded.Server) *Store {
	t.Helper()
	st, err := New(Config{Endpoints: srv.Endpoints(), Username: authUser, Password: authPassword, MaxTxnOps: testMaxTxnOps, Logger: testLogger()})
	if err != nil {
		t.Fatalf("New as %q: %v", authUser, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// TestAuth: with the right credentials, a Store does all concord does
// under the prefix its role grants: a session and its key, a
// compare-and-swap, a Txn, a watch, closing and expiring a session.
func TestAuth(t *testing.T) {
	srv, _ := startAuthServer(t)
	st := openAuthStore(t, srv)
	ctx := ctxFor(t, 30*time.Second)
	p := authPrefix + "svc/"

	w := startWatch(t, st, p)
	w.until(10*time.Second, "first snapshot", holds(map[string]string{}))
	// A session that outlives a loaded machine's slow steps: the test ends
	// it itself (closing, then expiring one), and never waits for a TTL.
	const sessionTTL = 10 * time.Second
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: sessionTTL})
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	if _, err := s.Register(ctx, p+"node-a", []byte("a")); err != nil {
		t.Fatalf("Register: %v", err)
	}
	kv, err := st.Create(ctx, p+"primary", []byte("a"))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if kv, err = st.CompareAndSwap(ctx, p+"primary", []byte("b"), kv.Version); err != nil {
		t.Fatalf("CompareAndSwap: %v", err)
	}
	if _, err := st.CompareAndSwap(ctx, p+"primary", []byte("c"), kv.Version-1); !errors.Is(err, core.ErrConflict) {
		t.Fatalf("CompareAndSwap at a stale version: %v, want ErrConflict", err)
	}
	res, err := st.Txn(ctx, []core.Op{
		{Kind: core.OpCAS, Key: p + "primary", Value: []byte("d"), Version: kv.Version},
		{Kind: core.OpCreate, Key: p + "epoch", Value: []byte("1")},
		{Kind: core.OpGet, Key: p + "node-a"},
	})
	if err != nil {
		t.Fatalf("Txn: %v", err)
	}
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("Txn op %d: %v", i, r.Err)
		}
	}
	w.until(10*time.Second, "every write", holds(map[string]string{p + "node-a": "a", p + "primary": "d", p + "epoch": "1"}))
	epoch, err := st.Get(ctx, p+"epoch")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteVersion(ctx, p+"epoch", epoch.Version); err != nil {
		t.Fatalf("DeleteVersion: %v", err)
	}
	w.until(10*time.Second, "the deleted key gone", holds(map[string]string{p + "node-a": "a", p + "primary": "d"}))
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Session.Close (revoke): %v", err)
	}
	w.until(10*time.Second, "the session's key gone", holds(map[string]string{p + "primary": "d"}))

	s2, err := st.NewSession(ctx, core.SessionOptions{TTL: sessionTTL})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Register(ctx, p+"node-b", []byte("b")); err != nil {
		t.Fatal(err)
	}
	if err := st.ExpireSession(ctx, s2.ID()); err != nil {
		t.Fatalf("ExpireSession: %v", err)
	}
	w.until(10*time.Second, "the expired session's key gone", holds(map[string]string{p + "primary": "d"}))
}

// TestAuthWrongPassword: New authenticates, and a wrong password fails
// it at once with etcd's authentication error, which is not a core
// error: not ErrInvalidArgument (etcd gives it that gRPC code) nor
// ErrUnavailable (retrying cannot help).
func TestAuthWrongPassword(t *testing.T) {
	srv, _ := startAuthServer(t)
	for _, tc := range []struct{ user, password string }{
		{authUser, "wrong"},
		{"nobody", "whatever"},
	} {
		start := time.Now()
		st, err := New(Config{Endpoints: srv.Endpoints(), Username: tc.user, Password: tc.password, DialTimeout: 10 * time.Second})
		took := time.Since(start)
		if err == nil {
			_ = st.Close()
			t.Fatalf("New as %q with a wrong password succeeded", tc.user)
		}
		if !errors.Is(err, rpctypes.ErrAuthFailed) || !errors.Is(err, core.ErrDenied) || !strings.Contains(err.Error(), "authentication failed") {
			t.Errorf("New as %q with a wrong password: %v, want rpctypes.ErrAuthFailed and core.ErrDenied saying authentication failed", tc.user, err)
		}
		if errors.Is(err, core.ErrInvalidArgument) || errors.Is(err, core.ErrUnavailable) {
			t.Errorf("New as %q with a wrong password: %v, want neither ErrInvalidArgument nor ErrUnavailable", tc.user, err)
		}
		if took > 5*time.Second {
			t.Errorf("New as %q with a wrong password took %v, want it to fail at once", tc.user, took)
		}
	}

	// Without credentials, every call is refused as well, and not
	// retried until the context ends.
	anon := openStore(t, srv.Endpoints())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := anon.Get(ctx, authPrefix+"k")
	if !errors.Is(err, rpctypes.ErrUserEmpty) || !errors.Is(err, core.ErrDenied) || errors.Is(err, core.ErrInvalidArgument) {
		t.Errorf("Get without credentials: %v, want rpctypes.ErrUserEmpty and core.ErrDenied", err)
	}
	if ctx.Err() != nil {
		t.Errorf("Get without credentials returned only when its context ended: %v", err)
	}
}

// TestAuthPermissionDenied: every kind of call outside the granted prefix
// fails at once with etcd's permission error, not retried until its
// context ends, and not as ErrUnavailable; and a watch whose permission
// is revoked while it runs ends with that error instead of watching
// again forever.
func TestAuthPermissionDenied(t *testing.T) {
	srv, root := startAuthServer(t)
	st := openAuthStore(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const outside = "other/k"
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"Get", func() error { _, err := st.Get(ctx, outside); return err }},
		{"List", func() error { _, err := st.List(ctx, "other/"); return err }},
		{"List of everything", func() error { _, err := st.List(ctx, ""); return err }},
		{"Create", func() error { _, err := st.Create(ctx, outside, []byte("v")); return err }},
		{"CompareAndSwap", func() error { _, err := st.CompareAndSwap(ctx, outside, []byte("v"), 1); return err }},
		{"DeleteVersion", func() error { return st.DeleteVersion(ctx, outside, 1) }},
		{"Register", func() error { _, err := s.Register(ctx, outside, []byte("v")); return err }},
		{"Txn with one key outside", func() error {
			_, err := st.Txn(ctx, []core.Op{
				{Kind: core.OpCreate, Key: authPrefix + "in", Value: []byte("v")},
				{Kind: core.OpCreate, Key: outside, Value: []byte("v")},
			})
			return err
		}},
		{"Watch", func() error {
			ch, err := st.Watch(ctx, "other/")
			if err == nil {
				for range ch {
				}
			}
			return err
		}},
	} {
		start := time.Now()
		err := tc.call()
		if !errors.Is(err, rpctypes.ErrPermissionDenied) || !errors.Is(err, core.ErrDenied) {
			t.Errorf("%s outside the granted prefix: %v, want rpctypes.ErrPermissionDenied and core.ErrDenied", tc.name, err)
		}
		if errors.Is(err, core.ErrUnavailable) || errors.Is(err, core.ErrInvalidArgument) {
			t.Errorf("%s outside the granted prefix: %v, want neither ErrUnavailable nor ErrInvalidArgument", tc.name, err)
		}
		if d := time.Since(start); d > 5*time.Second || ctx.Err() != nil {
			t.Errorf("%s outside the granted prefix took %v (context: %v), want it refused at once", tc.name, d, ctx.Err())
		}
	}
	if _, err := st.Get(ctx, authPrefix+"in"); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("Get of the refused Txn's key inside the prefix: %v, want ErrNotFound (nothing of the Txn applied)", err)
	}

	// etcd checks a watch's permission only when the watch is made: one
	// made again, after the connection was lost, once its permission has
	// been revoked, is refused, and the Store's watch ends with that
	// error instead of watching again forever.
	link, err := netfault.New(hostPort(t, srv.Endpoints()[0]))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = link.Close() })
	linked, err := New(Config{Endpoints: []string{"http://" + link.Addr()}, Username: authUser, Password: authPassword, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer linked.Close()
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	ch, err := linked.Watch(wctx, authPrefix)
	if err != nil {
		t.Fatal(err)
	}
	<-ch // the first snapshot
	link.Cut()
	if _, err := root.RoleRevokePermission(ctx, authUser, authPrefix, clientv3.GetPrefixRangeEnd(authPrefix)); err != nil {
		t.Fatal(err)
	}
	link.Restore()
	var last core.Snapshot
	timeout := time.After(15 * time.Second)
	for open := true; open; {
		select {
		case snap, ok := <-ch:
			if ok {
				last = snap
			}
			open = ok
		case <-timeout:
			t.Fatalf("watch still open 15s after its permission was revoked (last %+v)", last)
		}
	}
	if !errors.Is(last.Err, rpctypes.ErrPermissionDenied) {
		t.Errorf("watch after its permission was revoked: last Err %v, want rpctypes.ErrPermissionDenied", last.Err)
	}
}
