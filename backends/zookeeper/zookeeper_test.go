package zookeeper

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/core"
)

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"no endpoints", Config{}, "Config.Endpoints"},
		{"empty endpoint", Config{Endpoints: []string{""}}, "Config.Endpoints"},
		{"scheme", Config{Endpoints: []string{"zk://h:2181"}}, "Config.Endpoints"},
		{"chroot", Config{Endpoints: []string{"h:2181/concord"}}, "Config.Endpoints"},
		{"list in one", Config{Endpoints: []string{"a:2181,b:2181"}}, "Config.Endpoints"},
		{"bad port", Config{Endpoints: []string{"h:x"}}, "Config.Endpoints"},
		{"port out of range", Config{Endpoints: []string{"h:70000"}}, "Config.Endpoints"},
		{"bare IPv6", Config{Endpoints: []string{"::1"}}, "Config.Endpoints"},
		{"no host", Config{Endpoints: []string{":2181"}}, "Config.Endpoints"},
		{"negative dial timeout", Config{Endpoints: []string{"h"}, DialTimeout: -time.Second}, "Config.DialTimeout"},
		{"digest without password", Config{Endpoints: []string{"h"}, Digest: "user"}, "Config.Digest"},
		{"digest with empty user", Config{Endpoints: []string{"h"}, Digest: ":pw"}, "Config.Digest"},
		{"digest with empty password", Config{Endpoints: []string{"h"}, Digest: "user:"}, "Config.Digest"},
	} {
		st, err := New(tc.cfg)
		if !errors.Is(err, core.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.field) {
			if st != nil {
				_ = st.Close()
			}
			t.Errorf("%s: New = %v, want ErrInvalidArgument naming %s", tc.name, err, tc.field)
		}
	}
}

func TestConfigEndpoints(t *testing.T) {
	cfg, err := Config{Endpoints: []string{"h", "h:1", "10.0.0.1", "[::1]", "[::1]:2182"}}.resolved()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"h:2181", "h:1", "10.0.0.1:2181", "[::1]:2181", "[::1]:2182"}
	for i := range want {
		if cfg.Endpoints[i] != want[i] {
			t.Errorf("endpoint %d = %q, want %q", i, cfg.Endpoints[i], want[i])
		}
	}
	if cfg.DialTimeout != DefaultDialTimeout || cfg.Logger == nil {
		t.Errorf("defaults not applied: %+v", cfg)
	}
}

// deadEndpoint returns an address where nothing listens.
func deadEndpoint(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestNoServer: New does not wait for a server; calls fail by their
// context or with ErrUnavailable; bad keys fail before anything is sent;
// a closed Store fails with ErrClosed; nothing outlives Close.
func TestNoServer(t *testing.T) {
	start := time.Now()
	st, err := New(Config{Endpoints: []string{deadEndpoint(t)}, DialTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("New with no server listening: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("New took %v with no server", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := st.Get(ctx, "k"); !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, core.ErrUnavailable) {
		t.Errorf("Get with no server: %v, want the context's error or ErrUnavailable", err)
	}
	if _, err := st.Create(context.Background(), "a//b", nil); !errors.Is(err, core.ErrInvalidArgument) {
		t.Errorf("Create of a bad key: %v, want ErrInvalidArgument", err)
	}
	if err := st.DeleteVersion(context.Background(), "a/", 1); !errors.Is(err, core.ErrInvalidArgument) {
		t.Errorf("DeleteVersion of a bad key: %v, want ErrInvalidArgument", err)
	}
	if err := st.DeleteVersion(ctx, "k", 1); !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, core.ErrUnavailable) {
		t.Errorf("DeleteVersion with no server: %v, want the context's error or ErrUnavailable", err)
	}
	if _, err := st.List(context.Background(), "a//"); !errors.Is(err, core.ErrInvalidArgument) {
		t.Errorf("List of a bad prefix: %v, want ErrInvalidArgument", err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if _, err := st.NewSession(sctx, core.SessionOptions{TTL: time.Second}); !errors.Is(err, core.ErrUnavailable) {
		t.Errorf("NewSession with no server: %v, want ErrUnavailable after DialTimeout", err)
	}
	for _, ttl := range []time.Duration{0, -1, time.Microsecond, 1500 * time.Microsecond} {
		if _, err := st.NewSession(sctx, core.SessionOptions{TTL: ttl}); !errors.Is(err, core.ErrInvalidArgument) {
			t.Errorf("NewSession(TTL %v): %v, want ErrInvalidArgument", ttl, err)
		}
	}
	if err := st.ExpireSession(sctx, "0x1234"); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("ExpireSession of a session this process never opened: %v, want ErrNotFound", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := st.Get(context.Background(), "k"); !errors.Is(err, core.ErrClosed) {
		t.Errorf("Get on a closed Store: %v, want ErrClosed", err)
	}
	if err := st.DeleteVersion(context.Background(), "k", 1); !errors.Is(err, core.ErrClosed) {
		t.Errorf("DeleteVersion on a closed Store: %v, want ErrClosed", err)
	}
	if _, err := st.Watch(context.Background(), "k/"); !errors.Is(err, core.ErrClosed) {
		t.Errorf("Watch on a closed Store: %v, want ErrClosed", err)
	}
}

// TestDigestNeedsServer: with a digest, New authenticates at once, and
// fails with ErrUnavailable within DialTimeout when no server answers.
func TestDigestNeedsServer(t *testing.T) {
	start := time.Now()
	st, err := New(Config{Endpoints: []string{deadEndpoint(t)}, DialTimeout: 300 * time.Millisecond, Digest: "u:p"})
	if err == nil {
		_ = st.Close()
		t.Fatal("New with a digest and no server: no error")
	}
	if !errors.Is(err, core.ErrUnavailable) {
		t.Errorf("New with a digest and no server: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("New took %v, want about DialTimeout", d)
	}
}
