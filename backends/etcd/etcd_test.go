package etcd

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/concordha/concord/backends/etcd/embedded"
	"github.com/concordha/concord/core"
)

// TestNewDoesNotWait: New returns at once for a cluster that does not
// answer, and calls then fail by their own context.
func TestNewDoesNotWait(t *testing.T) {
	url, err := embedded.FreeLoopbackURL() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	st, err := New(Config{Endpoints: []string{url}, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("New with an unreachable endpoint: %v", err)
	}
	defer st.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("New took %v with an unreachable endpoint", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := st.Get(ctx, "/k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get from an unreachable cluster: %v, want one wrapping context.DeadlineExceeded", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no endpoints", Config{}},
		{"user without password", Config{Endpoints: []string{"http://127.0.0.1:1"}, Username: "u"}},
		{"negative dial timeout", Config{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: -1}},
		{"negative keep-alive", Config{Endpoints: []string{"http://127.0.0.1:1"}, KeepAliveInterval: -1}},
		{"tiny max txn ops", Config{Endpoints: []string{"http://127.0.0.1:1"}, MaxTxnOps: 8}},
		{"cert without key", Config{Endpoints: []string{"https://127.0.0.1:1"}, TLS: &TLSFiles{CertFile: "c.pem"}}},
		{"missing CA file", Config{Endpoints: []string{"https://127.0.0.1:1"}, TLS: &TLSFiles{CAFile: "/no/such/ca.pem"}}},
		// More TLS cases, and the fields the errors name: TestTLSConfigErrors.
	} {
		st, err := New(tc.cfg)
		if !errors.Is(err, core.ErrInvalidArgument) {
			if st != nil {
				_ = st.Close()
			}
			t.Errorf("%s: New = %v, want ErrInvalidArgument", tc.name, err)
		}
	}
}

// TestNewFromClient: the Store works on the caller's client and leaves it
// open when it closes, ending its own sessions and watches.
func TestNewFromClient(t *testing.T) {
	srv := startServer(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := NewFromClient(cli, Config{})
	ctx := ctxFor(t, 30*time.Second)
	if _, err := st.Create(ctx, "/from-client", []byte("v")); err != nil {
		t.Fatal(err)
	}
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(s.Err(), core.ErrSessionLost) {
		t.Errorf("session after Store.Close: Err %v, want ErrSessionLost", s.Err())
	}
	if _, err := st.Get(ctx, "/from-client"); !errors.Is(err, core.ErrClosed) {
		t.Errorf("Get on a closed Store: %v, want ErrClosed", err)
	}
	if _, err := cli.Get(ctx, "/from-client"); err != nil {
		t.Errorf("the caller's client after Store.Close: %v, want it still open", err)
	}
	// The caller closing its client under a live Store ends its watches
	// and sessions.
	cli2, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	st2 := NewFromClient(cli2, Config{})
	defer st2.Close()
	ch, err := st2.Watch(ctx, "/from-client")
	if err != nil {
		t.Fatal(err)
	}
	s2, err := st2.NewSession(ctx, core.SessionOptions{TTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_ = cli2.Close()
	var last core.Snapshot
	for snap := range ch {
		last = snap
	}
	if !errors.Is(last.Err, core.ErrClosed) {
		t.Errorf("watch after its client closed: last Err %v, want ErrClosed", last.Err)
	}
	select {
	case <-s2.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session still alive 5s after its client closed")
	}
	if !errors.Is(s2.Err(), core.ErrSessionLost) {
		t.Errorf("session after its client closed: Err %v, want ErrSessionLost", s2.Err())
	}

	bad := NewFromClient(cli, Config{MaxTxnOps: 3})
	defer bad.Close()
	if _, err := bad.Get(ctx, "/from-client"); !errors.Is(err, core.ErrInvalidArgument) {
		t.Errorf("Get on a Store with an invalid Config: %v, want ErrInvalidArgument", err)
	}
}

func TestConvertError(t *testing.T) {
	s := newStore(nil, Config{}, false)
	defer s.Close()
	live := context.Background()
	for _, tc := range []struct {
		err  error
		want error
	}{
		{rpctypes.ErrGRPCNoLeader, core.ErrUnavailable},
		{rpctypes.ErrNoLeader, core.ErrUnavailable},
		{rpctypes.ErrGRPCTimeoutDueToLeaderFail, core.ErrUnavailable},
		{rpctypes.ErrGRPCStopped, core.ErrUnavailable},
		{status.Error(codes.Unavailable, "connection refused"), core.ErrUnavailable},
		{clientv3.ErrNoAvailableEndpoints, core.ErrUnavailable},
		{rpctypes.ErrGRPCTooManyOps, core.ErrInvalidArgument},
		{rpctypes.ErrGRPCRequestTooLarge, core.ErrInvalidArgument},
		{rpctypes.ErrGRPCLeaseNotFound, core.ErrNotFound},
		{rpctypes.ErrGRPCPermissionDenied, rpctypes.ErrPermissionDenied},
		{rpctypes.ErrGRPCAuthFailed, rpctypes.ErrAuthFailed},
		{rpctypes.ErrGRPCUserEmpty, rpctypes.ErrUserEmpty},
		// A watch's cancel reason: the status as text (see etcdError).
		{errors.New(rpctypes.ErrGRPCPermissionDenied.Error()), rpctypes.ErrPermissionDenied},
		{errors.New(rpctypes.ErrGRPCNoLeader.Error()), core.ErrUnavailable},
	} {
		got := s.convertError(live, "op", "k", tc.err)
		if !errors.Is(got, tc.want) {
			t.Errorf("convertError(%v) = %v, want one wrapping %v", tc.err, got, tc.want)
		}
	}
	// etcd refusing the client is ErrDenied, though etcd gives most of
	// those errors gRPC's InvalidArgument code; and retrying cannot help.
	for _, err := range []error{
		rpctypes.ErrGRPCAuthFailed,
		rpctypes.ErrGRPCUserEmpty,
		rpctypes.ErrGRPCAuthOldRevision,
		rpctypes.ErrGRPCPermissionDenied,
		errors.New(rpctypes.ErrGRPCPermissionDenied.Error()),
		errors.New(rpctypes.ErrGRPCUserEmpty.Error()),
	} {
		got := s.convertError(live, "op", "k", err)
		if !errors.Is(got, core.ErrDenied) || errors.Is(got, core.ErrInvalidArgument) || errors.Is(got, core.ErrUnavailable) {
			t.Errorf("convertError(%v) = %v, want ErrDenied alone of core's errors", err, got)
		}
		if !isPermanent(etcdError(err)) {
			t.Errorf("isPermanent(etcdError(%v)) = false, want true", err)
		}
	}
	for _, err := range []error{
		errors.New("rpc error: code = Unknown desc = something etcd does not say"),
		errors.New("rpc error: code = PermissionDenied"),
		status.Error(codes.PermissionDenied, "not etcd's"),
	} {
		if got := etcdError(err); got != err {
			t.Errorf("etcdError(%v) = %v, want it unchanged", err, got)
		}
	}
	ended, cancel := context.WithCancel(live)
	cancel()
	if got := s.convertError(ended, "op", "k", status.Error(codes.Canceled, "context canceled")); !errors.Is(got, context.Canceled) {
		t.Errorf("convertError with an ended context = %v, want one wrapping context.Canceled", got)
	}
	if got := s.convertError(live, "op", "k", fmt.Errorf("something else")); errors.Is(got, core.ErrUnavailable) {
		t.Errorf("convertError of an unknown error = %v, want it passed through", got)
	}
	_ = s.Close()
	if got := s.convertError(live, "op", "k", status.Error(codes.Canceled, "grpc: the client connection is closing")); !errors.Is(got, core.ErrClosed) {
		t.Errorf("convertError on a closed Store = %v, want ErrClosed", got)
	}
}
