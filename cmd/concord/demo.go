package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/concordha/concord/backends/etcd"
	"github.com/concordha/concord/backends/etcd/embedded"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/netfault"
)

type demoOptions struct {
	nodes    int
	services int
	ttl      time.Duration
	verbose  bool
}

func demoCmd() *cobra.Command {
	o := demoOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a local cluster in one process: election, crash, failover, handover",
		Long: `demo starts a cluster of 3 to 5 nodes providing two or more services in
one process, shows the election, crashes the primary of the first service,
shows the failover, hands the second service over gracefully, and prints a
timeline with timings. It exits 0 when every step has happened.

The nodes share an etcd server embedded in this process (its data lives in
a temporary directory, removed at the end). Each node reaches it through a
link of its own, and the crash cuts that link: the node falls silent, as a
dead machine would, and etcd expires its session after the TTL.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.nodes < 3 || o.nodes > 5 {
				return fmt.Errorf("--nodes is %d: give 3 to 5", o.nodes)
			}
			if o.services < 2 || o.services > 20 {
				return fmt.Errorf("--services is %d: give 2 to 20", o.services)
			}
			if o.ttl < time.Second || o.ttl > time.Minute || o.ttl%time.Second != 0 {
				return fmt.Errorf("--ttl is %v: give whole seconds from 1s to 1m (etcd leases count in seconds)", o.ttl)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 20*o.ttl+30*time.Second)
			defer cancel()
			return runDemo(ctx, cmd.OutOrStdout(), o)
		},
	}
	cmd.Flags().IntVar(&o.nodes, "nodes", 3, "how many nodes (3 to 5)")
	cmd.Flags().IntVar(&o.services, "services", 2, "how many services (2 to 20)")
	cmd.Flags().DurationVar(&o.ttl, "ttl", 2*time.Second, "session TTL: the failure-detection bound")
	cmd.Flags().BoolVar(&o.verbose, "verbose", false, "also print the nodes' logs")
	return cmd
}

// demo is one run: the store, the nodes, and the timeline it prints.
type demo struct {
	out   io.Writer
	o     demoOptions
	srv   *embedded.Server
	obs   *etcd.Store // the demo's own view of the store
	keys  core.Keys
	start time.Time

	mu     sync.Mutex
	done   bool // after "done", shutdown events are not printed
	nodes  map[string]*core.Node
	links  map[string]*netfault.Link
	stores map[string]*etcd.Store
	dead   map[string]bool
	svcs   []string
	wg     sync.WaitGroup
}

func runDemo(ctx context.Context, out io.Writer, o demoOptions) error {
	keys, _ := core.NewKeys("concord/")
	d := &demo{out: out, o: o, keys: keys, start: time.Now(),
		nodes: map[string]*core.Node{}, links: map[string]*netfault.Link{}, stores: map[string]*etcd.Store{}, dead: map[string]bool{}}
	dir, err := os.MkdirTemp("", "concord-demo-")
	if err != nil {
		return fmt.Errorf("make the embedded etcd's data directory: %w", err)
	}
	defer os.RemoveAll(dir)
	d.say("starting an embedded etcd (data in a temporary directory)")
	// A shorter raft heartbeat than etcd's default lets etcd grant leases
	// as short as 1s; one member has no peers to keep up with.
	d.srv, err = embedded.Start(ctx, embedded.Config{
		Name: "demo", DataDir: dir,
		HeartbeatInterval: 50 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
		Logger: d.logger(),
	})
	if err != nil {
		return fmt.Errorf("start the embedded etcd: %w", err)
	}
	defer d.srv.Close()
	d.obs, err = etcd.New(etcd.Config{Endpoints: d.srv.Endpoints(), Logger: d.logger()})
	if err != nil {
		return err
	}
	defer d.obs.Close()
	d.say("etcd is serving at %s", d.srv.Endpoints()[0])
	for i := 0; i < o.services; i++ {
		name := []string{"db", "queue"}[min(i, 1)]
		if i >= 2 {
			name = fmt.Sprintf("svc%d", i+1)
		}
		d.svcs = append(d.svcs, name)
	}
	defer d.stopAll()

	d.say("starting %d nodes providing %v (session TTL %v)", o.nodes, d.svcs, o.ttl)
	for i := 1; i <= o.nodes; i++ {
		if err := d.startNode(ctx, i); err != nil {
			return err
		}
	}
	first, second := d.svcs[0], d.svcs[1]
	p1, err := d.waitPrimary(ctx, first, "")
	if err != nil {
		return err
	}
	p2, err := d.waitPrimary(ctx, second, "")
	if err != nil {
		return err
	}
	d.say("elected: %s is primary of %s, %s is primary of %s", p1, first, p2, second)

	// The primary makes a spare its secondary and records a checkpoint,
	// so that the failover below must pick that secondary.
	sec := ""
	for i := 1; i <= o.nodes; i++ {
		if id := nodeID(i); id != p1 {
			sec = id
		}
	}
	if err := d.node(p1).Promote(ctx, first, sec); err != nil {
		return fmt.Errorf("promote %s: %w", sec, err)
	}
	if err := d.node(p1).Acknowledge(ctx, first, sec, 1); err != nil {
		return fmt.Errorf("acknowledge %s: %w", sec, err)
	}
	d.say("%s promotes %s to secondary of %s (it acknowledged checkpoint 1)", p1, sec, first)

	// Crash: the node falls off the network, as a dead machine would, and
	// stops renewing its session. etcd expires the session after the TTL
	// and deletes its member record.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	crash := time.Now()
	gone, err := d.watchGone(wctx, d.keys.Member(p1), func(at time.Time) {
		d.say("the store expires %s's session %v after the crash", p1, at.Sub(crash).Round(time.Millisecond))
	})
	if err != nil {
		return err
	}
	d.say("crash: %s's process dies; it stops renewing its session", p1)
	d.crash(p1)
	np, err := d.waitPrimary(ctx, first, p1)
	if err != nil {
		return err
	}
	elected := time.Now()
	var expired time.Time
	select {
	case expired = <-gone:
	case <-ctx.Done():
		return fmt.Errorf("%s's session never expired: %w", p1, ctx.Err())
	}
	wcancel()
	d.say("failover: %s is primary of %s, %v after the crash, %v after the session expired",
		np, first, elected.Sub(crash).Round(time.Millisecond), elected.Sub(expired).Round(time.Millisecond))
	if np != sec {
		return fmt.Errorf("the failover chose %s, but the secondary %s should rank first", np, sec)
	}

	// Graceful handover: the primary of the second service steps down.
	cur, err := d.waitPrimary(ctx, second, p1)
	if err != nil {
		return err
	}
	var held []string
	for _, svc := range d.svcs {
		if st, err := d.node(cur).Status(svc); err == nil && st.Role == core.RolePrimary {
			held = append(held, svc)
		}
	}
	d.say("handover: %s steps down (it resigns %s, then leaves)", cur, strings.Join(held, " and "))
	t0 := time.Now()
	if err := d.node(cur).StepDown(ctx); err != nil {
		return fmt.Errorf("step down %s: %w", cur, err)
	}
	d.forget(cur)
	hp, err := d.waitPrimary(ctx, second, cur)
	if err != nil {
		return err
	}
	d.say("handover: %s is primary of %s, %v after the step-down began (no TTL to wait for)", hp, second, time.Since(t0).Round(time.Millisecond))
	d.say("done")
	d.mu.Lock()
	d.done = true
	d.mu.Unlock()
	return nil
}

func nodeID(i int) string { return fmt.Sprintf("n%d", i) }

func (d *demo) say(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done {
		return
	}
	fmt.Fprintf(d.out, "%8s  %s\n", "+"+time.Since(d.start).Round(time.Millisecond).String(), fmt.Sprintf(format, args...))
}

// logger is where the nodes and etcd log: nowhere, unless --verbose.
func (d *demo) logger() *slog.Logger {
	if d.o.verbose {
		return slog.New(slog.NewTextHandler(d.out, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// startNode starts node i with its own link to etcd and its own client.
func (d *demo) startNode(ctx context.Context, i int) error {
	id := nodeID(i)
	link, err := netfault.New(strings.TrimPrefix(d.srv.Endpoints()[0], "http://"))
	if err != nil {
		return err
	}
	st, err := etcd.New(etcd.Config{Endpoints: []string{"http://" + link.Addr()}, DialTimeout: d.o.ttl, Logger: d.logger()})
	if err != nil {
		_ = link.Close()
		return err
	}
	d.mu.Lock()
	d.links[id], d.stores[id] = link, st
	d.mu.Unlock()
	cfg := core.DefaultConfig()
	cfg.NodeID = id
	cfg.SessionTTL = d.o.ttl
	cfg.OpTimeout = d.o.ttl / 4
	cfg.RetryMax = d.o.ttl / 4
	cfg.Logger = d.logger()
	for j, s := range d.svcs {
		// Rotate priorities so that the services start on different nodes.
		cfg.Services = append(cfg.Services, core.ServiceConfig{Name: s, Priority: (d.o.nodes + j - i + 1) % d.o.nodes})
	}
	n, err := core.Start(ctx, st, cfg)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.nodes[id] = n
	d.mu.Unlock()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		primary := map[string]bool{}
		for ev := range n.Events() {
			switch {
			case ev.Role == core.RolePrimary && !primary[ev.Service]:
				primary[ev.Service] = true
				d.say("%s becomes primary of %s (fencing token %d, epoch %d)", id, ev.Service, ev.Token, ev.Epoch)
			case ev.Role != core.RolePrimary && primary[ev.Service]:
				primary[ev.Service] = false
				if !d.isDead(id) {
					d.say("%s stops acting as primary of %s", id, ev.Service)
				}
			}
		}
	}()
	return nil
}

func (d *demo) node(id string) *core.Node {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.nodes[id]
}

func (d *demo) forget(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.nodes, id)
}

// crash cuts the node's link to etcd and stops it; it cannot tell etcd,
// so its session lives on until the TTL runs out.
func (d *demo) crash(id string) {
	d.mu.Lock()
	link, n := d.links[id], d.nodes[id]
	delete(d.nodes, id)
	d.dead[id] = true
	d.mu.Unlock()
	link.Cut()
	if n != nil {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			_ = n.Close() // its attempt to close the session goes nowhere
		}()
	}
}

// isDead tells whether the node was crashed: a dead process says nothing.
func (d *demo) isDead(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dead[id]
}

func (d *demo) stopAll() {
	d.mu.Lock()
	nodes, links, stores := d.nodes, d.links, d.stores
	d.nodes, d.links, d.stores = map[string]*core.Node{}, map[string]*netfault.Link{}, map[string]*etcd.Store{}
	d.mu.Unlock()
	for _, n := range nodes {
		_ = n.Close()
	}
	d.wg.Wait()
	for _, st := range stores {
		_ = st.Close()
	}
	for _, l := range links {
		_ = l.Close()
	}
}

// waitPrimary waits until every running node agrees on one primary of svc
// other than not, and returns it.
func (d *demo) waitPrimary(ctx context.Context, svc, not string) (string, error) {
	for {
		d.mu.Lock()
		agreed, ok := "", len(d.nodes) > 0
		for _, n := range d.nodes {
			st, err := n.Status(svc)
			if err != nil || st.Primary == "" || st.Primary == not || (agreed != "" && st.Primary != agreed) {
				ok = false
				break
			}
			agreed = st.Primary
		}
		if ok {
			if p := d.nodes[agreed]; p == nil {
				ok = false
			} else if _, err := p.Fence(svc); err != nil {
				ok = false
			}
		}
		d.mu.Unlock()
		if ok {
			return agreed, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no agreed primary of %s: %w", svc, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// watchGone starts watching key and returns a channel that receives the
// time at which its deletion was seen; seen is called at that moment.
func (d *demo) watchGone(ctx context.Context, key string, seen func(time.Time)) (<-chan time.Time, error) {
	ch, err := d.obs.Watch(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", key, err)
	}
	gone := make(chan time.Time, 1)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for snap := range ch {
			if snap.Err == nil && !hasKey(snap, key) {
				at := time.Now()
				seen(at)
				gone <- at
				break
			}
		}
		for range ch { // until ctx ends
		}
	}()
	return gone, nil
}

func hasKey(s core.Snapshot, key string) bool {
	for _, kv := range s.KVs {
		if kv.Key == key {
			return true
		}
	}
	return false
}
