package replica_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/concordha/concord/client"
	"github.com/concordha/concord/proxy"
	"github.com/concordha/concord/replica"
)

// whoServer plays a node's service: it answers every connection with the
// node's ID, then closes it.
func whoServer(t *testing.T, id string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(id))
			c.Close()
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// who connects through addr and returns the ID the service answered.
func who(addr string, within time.Duration) (string, error) {
	c, err := net.DialTimeout("tcp", addr, within)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(within))
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	if len(b) == 0 {
		return "", errors.New("closed without an answer")
	}
	return string(b), nil
}

// TestProxyThroughAStoreOutage: a proxy cut off from the store keeps
// forwarding to the primary while the primary's node API proves its
// session valid; once the primary is cut off too, the proof ends, new
// connections are held, and the next primary gets them when the proxy
// reaches the store again.
func TestProxyThroughAStoreOutage(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		addr := whoServer(t, id)
		c.start(id, svc{name: "db", tune: func(s *replica.ServiceSpec) { s.Endpoint = addr }})
	}
	prim, _ := c.settled("db", 1)
	// Each node's API, reached under the node's member address (its ID
	// here), counting the checks it answers.
	apis := map[string]string{}
	var checks atomic.Int64
	for id, m := range c.members {
		h := replica.HealthAPI(m.host)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			checks.Add(1)
			h.ServeHTTP(w, r)
		}))
		t.Cleanup(srv.Close)
		apis[id] = srv.Listener.Addr().String()
	}
	var d net.Dialer
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, _ := net.SplitHostPort(addr)
		if a, ok := apis[host]; ok {
			addr = a
		}
		return d.DialContext(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	r, err := client.NewWithOptions(c.srv.Client("proxy"), "concord/", client.Options{Check: client.HTTPCheck(&http.Client{Transport: tr, Timeout: ttl}, "http")})
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(proxy.Config{Service: "db", Listen: "127.0.0.1:0", Source: proxy.ResolverSource{Resolver: r, Service: "db"}, HoldTimeout: 60 * ttl})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("proxy: %v", err)
		}
	}()
	eventually(t, 10*ttl, func() error {
		if p.Addr() == nil {
			return errors.New("not listening")
		}
		return nil
	})
	through := p.Addr().String()
	reaches := func(want string) func() error {
		return func() error {
			got, err := who(through, 10*ttl)
			if err != nil || got != want {
				return fmt.Errorf("through the proxy: %q, %v; want %s", got, err, want)
			}
			return nil
		}
	}
	eventually(t, 20*ttl, reaches(prim))
	if n := checks.Load(); n != 0 {
		t.Fatalf("%d checks while the store answered", n)
	}

	// The proxy loses the store: the primary's node proves its session,
	// and the proxy forwards on, for many TTLs.
	c.srv.Isolate("proxy", true)
	eventually(t, 20*ttl, func() error {
		if n := checks.Load(); n < 3 {
			return fmt.Errorf("%d checks", n)
		}
		return nil
	})
	for range 3 {
		begun := checks.Load()
		if err := reaches(prim)(); err != nil {
			t.Fatalf("in the store outage: %v", err)
		}
		eventually(t, 20*ttl, func() error {
			if checks.Load() < begun+2 {
				return errors.New("no new proof yet")
			}
			return nil
		})
	}

	// The primary loses the store too: its node stops proving, and the
	// proxy holds new connections; the others elect a new primary.
	heldBefore := p.Stats().Held
	c.srv.Isolate(prim, true)
	c.srv.Isolate(prim+"-host", true)
	eventually(t, 20*ttl, func() error {
		if u := p.Current(); u.Valid {
			return fmt.Errorf("still forwarding to %s", u.Endpoint)
		}
		return nil
	})
	if why := p.Current().Why; !strings.Contains(why, "store cannot be watched") {
		t.Fatalf("holding because %q", why)
	}
	held := make(chan string, 1)
	go func() {
		got, err := who(through, 60*ttl)
		if err != nil {
			got = err.Error()
		}
		held <- got
	}()
	eventually(t, 20*ttl, func() error {
		if s := p.Stats(); s.Held <= heldBefore {
			return fmt.Errorf("stats %+v", s)
		}
		return nil
	})
	// The proxy reaches the store again: the held connection goes to the
	// new primary.
	c.srv.Isolate("proxy", false)
	select {
	case got := <-held:
		if got == prim || (got != "a" && got != "b" && got != "c") {
			t.Fatalf("the held connection reached %q, want the new primary", got)
		}
	case <-time.After(60 * ttl):
		t.Fatal("the held connection was never forwarded")
	}
	c.srv.Isolate(prim, false)
	c.srv.Isolate(prim+"-host", false)
}
