package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/concordha/concord/backends/memory"
	"github.com/concordha/concord/core"
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

The nodes share an in-memory store here; the same code runs on etcd,
Consul or ZooKeeper.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.nodes < 3 || o.nodes > 5 {
				return fmt.Errorf("--nodes is %d: give 3 to 5", o.nodes)
			}
			if o.services < 2 || o.services > 20 {
				return fmt.Errorf("--services is %d: give 2 to 20", o.services)
			}
			if o.ttl < 200*time.Millisecond || o.ttl > time.Minute {
				return fmt.Errorf("--ttl is %v: give 200ms to 1m", o.ttl)
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
	srv   *memory.Server
	obs   core.Store
	keys  core.Keys
	start time.Time

	mu    sync.Mutex
	done  bool // after "done", shutdown events are not printed
	nodes map[string]*core.Node
	svcs  []string
	wg    sync.WaitGroup
}

func runDemo(ctx context.Context, out io.Writer, o demoOptions) error {
	keys, _ := core.NewKeys("concord/")
	d := &demo{out: out, o: o, srv: memory.New(memory.Options{}), keys: keys, start: time.Now(), nodes: map[string]*core.Node{}}
	defer d.srv.Close()
	d.obs = d.srv.Client("demo")
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

	// Crash: the process stops renewing its session, as a dead machine
	// would. The store expires the session after the TTL.
	member, err := d.obs.Get(ctx, d.keys.Member(p1))
	if err != nil {
		return fmt.Errorf("read %s's member record: %w", p1, err)
	}
	rec, err := core.DecodeMember(member)
	if err != nil {
		return err
	}
	crash := time.Now()
	d.say("crash: %s's process dies; it stops renewing its session", p1)
	d.srv.Isolate(p1, true)
	d.stopNode(p1)
	expired, err := d.waitExpired(ctx, rec.Session)
	if err != nil {
		return err
	}
	d.say("the store expires %s's session %v after the crash", p1, expired.Sub(crash).Round(time.Millisecond))
	np, err := d.waitPrimary(ctx, first, p1)
	if err != nil {
		return err
	}
	elected := time.Now()
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
	d.say("handover: %s steps down (it resigns %s, then leaves)", cur, second)
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

func (d *demo) startNode(ctx context.Context, i int) error {
	id := nodeID(i)
	cfg := core.DefaultConfig()
	cfg.NodeID = id
	cfg.SessionTTL = d.o.ttl
	cfg.OpTimeout = d.o.ttl / 4
	cfg.RetryMax = d.o.ttl / 4
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if d.o.verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(d.out, nil))
	}
	for j, s := range d.svcs {
		// Rotate priorities so that the services start on different nodes.
		cfg.Services = append(cfg.Services, core.ServiceConfig{Name: s, Priority: (d.o.nodes + j - i + 1) % d.o.nodes})
	}
	n, err := core.Start(ctx, d.srv.Client(id), cfg)
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
				d.say("%s stops acting as primary of %s", id, ev.Service)
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

func (d *demo) stopNode(id string) {
	if n := d.node(id); n != nil {
		_ = n.Close()
		d.forget(id)
	}
}

func (d *demo) stopAll() {
	d.mu.Lock()
	nodes := d.nodes
	d.nodes = map[string]*core.Node{}
	d.mu.Unlock()
	for _, n := range nodes {
		_ = n.Close()
	}
	d.wg.Wait()
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

func (d *demo) waitExpired(ctx context.Context, session string) (time.Time, error) {
	for d.srv.SessionAlive(session) {
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("session %s never expired: %w", session, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	return time.Now(), nil
}
