package consul

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/concordha/concord/core"
)

// These tests need no Consul: they check what the Store decides before
// it sends anything. The conformance suite and the tests against a real
// agent are in the integration package.

// deadEndpoint returns host:port where nothing listens.
func deadEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func offlineStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	cfg.Endpoints = []string{deadEndpoint(t)}
	st, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func TestNewRejectsBadConfig(t *testing.T) {
	ep := []string{"127.0.0.1:8500"}
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string // named in the error
	}{
		{"no endpoints", Config{}, "Config.Endpoints"},
		{"no port", Config{Endpoints: []string{"127.0.0.1"}}, "Config.Endpoints[0]"},
		{"bad port", Config{Endpoints: []string{"127.0.0.1:0"}}, "Config.Endpoints[0]"},
		{"bad scheme", Config{Endpoints: []string{"unix:///tmp/consul.sock"}}, "Config.Endpoints[0]"},
		{"a path", Config{Endpoints: []string{"http://127.0.0.1:8500/consul"}}, "Config.Endpoints[0]"},
		{"mixed schemes", Config{Endpoints: []string{"http://127.0.0.1:8500", "https://127.0.0.1:8501"}}, "Config.Endpoints"},
		{"TLS with http", Config{Endpoints: []string{"http://127.0.0.1:8500"}, TLS: &TLSFiles{}}, "Config.TLS"},
		{"cert without key", Config{Endpoints: ep, TLS: &TLSFiles{CertFile: "c.pem"}}, "Config.TLS"},
		{"missing CA file", Config{Endpoints: ep, TLS: &TLSFiles{CAFile: "no-such-ca.pem"}}, "Config.TLS.CAFile"},
		{"negative dial timeout", Config{Endpoints: ep, DialTimeout: -1}, "Config.DialTimeout"},
		{"negative keep-alive", Config{Endpoints: ep, KeepAliveInterval: -1}, "Config.KeepAliveInterval"},
		{"negative lock-delay", Config{Endpoints: ep, LockDelay: -1}, "Config.LockDelay"},
		{"lock-delay over 60s", Config{Endpoints: ep, LockDelay: time.Minute + time.Millisecond}, "Config.LockDelay"},
		{"tiny max txn ops", Config{Endpoints: ep, MaxTxnOps: 1}, "Config.MaxTxnOps"},
	} {
		st, err := New(tc.cfg)
		if !errors.Is(err, core.ErrInvalidArgument) || !strings.Contains(fmt.Sprint(err), tc.field) {
			if st != nil {
				_ = st.Close()
			}
			t.Errorf("%s: New = %v, want ErrInvalidArgument naming %s", tc.name, err, tc.field)
		}
	}
}

// TestNewDoesNotWait: without a token, New does not talk to Consul; a
// call to an agent that refuses connections fails with ErrUnavailable.
func TestNewDoesNotWait(t *testing.T) {
	start := time.Now()
	st := offlineStore(t, Config{})
	if d := time.Since(start); d > time.Second {
		t.Errorf("New took %v with an unreachable endpoint", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := st.Get(ctx, "k"); !errors.Is(err, core.ErrUnavailable) {
		t.Errorf("Get from an agent that refuses connections: %v, want ErrUnavailable", err)
	}
	if _, err := st.Create(ctx, "k", nil); !errors.Is(err, core.ErrUnavailable) {
		t.Errorf("Create on an agent that refuses connections: %v, want ErrUnavailable", err)
	}
	if err := st.DeleteVersion(ctx, "k", 1); !errors.Is(err, core.ErrUnavailable) {
		t.Errorf("DeleteVersion on an agent that refuses connections: %v, want ErrUnavailable", err)
	}
}

// TestKeys: Consul keys cannot be empty, start with "/" (the error says
// what to do), or hold path segments that the HTTP API would clean away.
func TestKeys(t *testing.T) {
	st := offlineStore(t, Config{})
	ctx := context.Background()
	for _, key := range []string{"", "/storetest/k", "a//b", "a/./b", "a/../b", "a/.."} {
		calls := map[string]error{}
		_, calls["Get"] = st.Get(ctx, key)
		_, calls["Create"] = st.Create(ctx, key, nil)
		_, calls["CompareAndSwap"] = st.CompareAndSwap(ctx, key, nil, 1)
		calls["DeleteVersion"] = st.DeleteVersion(ctx, key, 1)
		_, calls["Txn"] = st.Txn(ctx, []core.Op{{Kind: core.OpGet, Key: key}})
		if key != "" {
			_, calls["List"] = st.List(ctx, key)
			_, calls["Watch"] = st.Watch(ctx, key)
			_, calls["Txn guard"] = st.Txn(ctx, []core.Op{{Kind: core.OpCreate, Key: "k", Guards: []core.Guard{{Key: key, Revision: 1}}}})
		}
		for call, err := range calls {
			if !errors.Is(err, core.ErrInvalidArgument) {
				t.Errorf("%s(%q): %v, want ErrInvalidArgument", call, key, err)
			}
			if strings.HasPrefix(key, "/") && !strings.Contains(fmt.Sprint(err), `drop the leading "/"`) {
				t.Errorf("%s(%q): %v, want it to say to drop the leading \"/\"", call, key, err)
			}
		}
	}
}

// TestSessionTTLRange: TTLs no Consul accepts are refused before asking.
func TestSessionTTLRange(t *testing.T) {
	st := offlineStore(t, Config{KeepAliveInterval: time.Second})
	for _, ttl := range []time.Duration{0, -time.Second, 2 * time.Second, 25 * time.Hour} {
		s, err := st.NewSession(context.Background(), core.SessionOptions{TTL: ttl})
		if !errors.Is(err, core.ErrInvalidArgument) {
			if s != nil {
				_ = s.Close(context.Background())
			}
			t.Errorf("NewSession(TTL %v) with a 1s renewal interval: %v, want ErrInvalidArgument", ttl, err)
		}
	}
}

// TestTxnLimits: a batch must fit in one Consul transaction, guards
// included.
func TestTxnLimits(t *testing.T) {
	st := offlineStore(t, Config{MaxTxnOps: 8})
	if got := st.MaxTxnOps(); got != 4 {
		t.Fatalf("MaxTxnOps() with Config.MaxTxnOps 8 = %d, want 4", got)
	}
	cas := func(key string, guards int) core.Op {
		o := core.Op{Kind: core.OpCAS, Key: key, Version: 1}
		for i := range guards {
			o.Guards = append(o.Guards, core.Guard{Key: fmt.Sprintf("g%d", i), Revision: 1})
		}
		return o
	}
	for name, ops := range map[string][]core.Op{
		"5 ops":                     {cas("a", 0), cas("b", 0), cas("c", 0), cas("d", 0), cas("e", 0)},
		"4 CAS and a guard":         {cas("a", 1), cas("b", 0), cas("c", 0), cas("d", 0)},
		"one CAS with seven guards": {cas("a", 7)},
	} {
		if _, err := st.Txn(context.Background(), ops); !errors.Is(err, core.ErrInvalidArgument) {
			t.Errorf("Txn with %s: %v, want ErrInvalidArgument", name, err)
		}
	}
}

// TestParseState reads the texts Consul 1.16 gives failed transaction
// operations, whatever the key says.
func TestParseState(t *testing.T) {
	for _, key := range []string{"k", `a "key" that doesn't exist, current modify index 1 != 2`} {
		q := fmt.Sprintf("%q", key)
		for what, want := range map[string]state{
			"failed index check for key " + q + ", current modify index 23 != 22": {known: true, exists: true, index: 23},
			"failed to check index, key " + q + " doesn't exist":                  {known: true},
			"failed to set key " + q + ", index is stale":                         {known: true, exists: true},
			"failed to delete key " + q + ", index is stale":                      {known: true, exists: true},
			"key " + q + " exists":                                                {known: true, exists: true},
			"key " + q + " doesn't exist":                                         {known: true},
			"something else about " + q:                                           {},
		} {
			if got := parseState(what, key); got != want {
				t.Errorf("parseState(%q) = %+v, want %+v", what, got, want)
			}
		}
	}
}

// TestClassify: how Consul's failures map onto core's errors.
func TestClassify(t *testing.T) {
	dial := &url.Error{Op: "Get", URL: "http://127.0.0.1:1/v1/kv/k", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}}
	for _, tc := range []struct {
		err  error
		want error
	}{
		{api.StatusError{Code: 403, Body: "Permission denied: anonymous token lacks permission 'key:read' on \"k\""}, core.ErrDenied},
		{errors.New("Failed request: ACL not found"), core.ErrDenied},
		{errors.New("Unexpected response code: 500 (No cluster leader)"), core.ErrUnavailable},
		{api.StatusError{Code: 500, Body: "Invalid Session TTL '500000000', must be between [1s=24h0m0s]"}, core.ErrInvalidArgument},
		{errors.New("Failed request: Transaction contains too many operations (129 > 128)"), core.ErrInvalidArgument},
		{dial, core.ErrUnavailable},
		{errors.New("failed to lock key \"k\" due to lock delay"), nil},
	} {
		if got := classify(tc.err); got != tc.want {
			t.Errorf("classify(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if !notSent(dial) {
		t.Errorf("notSent(%v) = false, want true for a failed dial", dial)
	}
}
