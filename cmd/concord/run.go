package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/config"
)

// configFlag adds --config, defaulting to $CONCORD_CONFIG.
func configFlag(cmd *cobra.Command, path *string) {
	cmd.Flags().StringVarP(path, "config", "c", os.Getenv("CONCORD_CONFIG"),
		"the node's YAML config file (default $CONCORD_CONFIG; see configs/local.yaml)")
}

// loadConfig loads the file --config names.
func loadConfig(path string) (*config.File, error) {
	if path == "" {
		return nil, errors.New("no config file: give --config FILE or set CONCORD_CONFIG (configs/local.yaml is a single-node example)")
	}
	return config.Load(path)
}

func runCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a node of a cluster, as its config file says",
		Long: `run starts a concord node: it opens the store named in the config (or
starts the embedded etcd), joins the cluster and takes part in the election
of every service the node provides, logging each role change.

SIGTERM or SIGINT makes the node resign every service it is primary of, so
that the next node takes over at once instead of after the session TTL, and
then leave. A second signal abandons resignations still in flight and
leaves at once (closing the session takes at most store.op_timeout).

Settings come from the file, and CONCORD_* environment variables override
them (CONCORD_STORE_SESSION_TTL=5s overrides store.session_ttl).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := loadConfig(path)
			if err != nil {
				return err
			}
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
			defer signal.Stop(sigs)
			return runNode(cmd.Context(), f, f.Logger(cmd.ErrOrStderr()), sigs)
		},
	}
	configFlag(cmd, &path)
	return cmd
}

func validateCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a config file (and its CONCORD_* overrides) without running",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := loadConfig(path)
			if err != nil {
				return err
			}
			describe(cmd.OutOrStdout(), f)
			for _, w := range f.Warnings() {
				fmt.Fprintln(cmd.OutOrStdout(), "  warning  ", w)
			}
			return nil
		},
	}
	configFlag(cmd, &path)
	return cmd
}

// describe prints what a valid config sets up.
func describe(w io.Writer, f *config.File) {
	c := f.CoreConfig()
	fmt.Fprintf(w, "%s: valid\n", f.Path)
	fmt.Fprintf(w, "  node      %s\n", c.NodeID)
	fmt.Fprintf(w, "  store     %s\n", storeSummary(f))
	fmt.Fprintf(w, "  prefix    %s\n", c.Prefix)
	fmt.Fprintf(w, "  timing    session TTL %v, op timeout %v, retry %v..%v, election timeout %v\n",
		c.SessionTTL, c.OpTimeout, c.RetryMin, c.RetryMax, c.ElectionTimeout)
	rc, err := f.ReplicaConfig()
	if err != nil {
		fmt.Fprintf(w, "  replica   %v\n", err)
		return
	}
	if rc.Listen != "" {
		fmt.Fprintf(w, "  api       %s (peers reach it at %s, tls %v), data %s\n", rc.Listen, rc.Advertise, rc.TLS != nil, rc.DataDir)
	}
	for i, s := range c.Services {
		fmt.Fprintf(w, "  service   %s (priority %d", s.Name, s.Priority)
		if s.DependsOn != "" {
			fmt.Fprintf(w, ", depends on %s", s.DependsOn)
		}
		if r := rc.Services[i]; r.Agent != nil {
			fmt.Fprintf(w, ", agent %s, %d secondaries, sync acks %d, checkpoint every %v, monitor every %v, %d restarts in %v",
				r.Agent.Command, r.Secondaries, r.SyncAcks, r.CheckpointInterval, r.MonitorInterval, r.MaxRestarts, r.RestartWindow)
		} else {
			fmt.Fprint(w, ", election only")
		}
		if r := rc.Services[i]; r.Endpoint != "" {
			fmt.Fprintf(w, ", publishes %s, drains %v in a switchover", r.Endpoint, r.Drain)
		}
		fmt.Fprintln(w, ")")
	}
	for _, p := range f.ProxyConfigs() {
		fmt.Fprintf(w, "  proxy     %s -> the primary of %s (hold %v, dial %v)\n", p.Listen, p.Service, p.HoldTimeout, p.DialTimeout)
	}
}

// runNode runs one node until a signal on sigs (a graceful step-down: it
// resigns, then leaves) or ctx's end (it leaves without resigning: its
// session is closed, so the others elect a successor at once).
func runNode(ctx context.Context, f *config.File, log *slog.Logger, sigs <-chan os.Signal) error {
	rc, err := f.ReplicaConfig()
	if err != nil {
		return err
	}
	cfg := withManager(f.CoreConfig(), rc)
	cfg.Logger = log
	log.Info("starting", "node", cfg.NodeID, "store", storeSummary(f), "services", len(cfg.Services), "session_ttl", cfg.SessionTTL)
	for _, w := range f.Warnings() {
		log.Warn("config: " + w)
	}

	// Opening the store and waiting for it may take long (an embedded
	// cluster waits for its peers); a signal ends the wait.
	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	tookSignal := make(chan bool, 1)
	go func() {
		select {
		case sig := <-sigs:
			log.Info("signal while starting: stopping", "signal", sig.String())
			cancel()
			tookSignal <- true
		case <-octx.Done():
			tookSignal <- false
		}
	}()
	st, err := openStore(octx, f, log)
	if err != nil {
		if octx.Err() != nil {
			return nil
		}
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Warn("closing the store", "err", err)
		}
	}()
	if ok, err := waitReachable(octx, st.store, cfg, log); !ok {
		return err
	}
	cancel()
	if <-tookSignal {
		return nil // a signal came as the store answered: stop, as asked
	}

	// The node's own context outlives a signal, so that it can resign.
	nctx, stop := context.WithCancel(context.Background())
	defer stop()
	n, err := core.Start(nctx, st.store, cfg)
	if err != nil {
		return err
	}
	defer n.Close()
	api, err := startHost(f, rc, st.store, n, log)
	if err != nil {
		return err
	}
	defer api.close()
	// The host follows the node's role changes and drives the services'
	// providers; it stops them once the node has stopped.
	hctx, hstop := context.WithCancel(context.Background())
	hostDone := make(chan error, 1)
	go func() { hostDone <- api.host.Run(hctx) }()
	stopProxies, err := startProxies(f, rc, st.store, cfg.Prefix, api, log)
	if err != nil {
		hstop()
		return err
	}
	defer stopProxies()
	defer func() {
		_ = n.Close()
		select {
		case <-hostDone:
		case <-time.After(2 * time.Minute):
			log.Error("the services' providers did not stop within 2m; leaving them")
			hstop()
		}
		hstop()
	}()

	select {
	case sig := <-sigs:
		log.Info("signal: draining and resigning every service this node is primary of, then leaving", "signal", sig.String())
		sctx, scancel := context.WithTimeout(context.Background(), 2*cfg.SessionTTL)
		defer scancel()
		done := make(chan error, 1)
		go func() {
			// Clients of the services it publishes finish their requests
			// and hold new ones off first (services[].drain); then each
			// service sends its secondaries a last checkpoint.
			if err := api.host.PrepareStepDown(sctx); err != nil {
				log.Warn("preparing the step-down", "err", err)
			}
			done <- n.StepDown(sctx)
		}()
		select {
		case err := <-done:
			if err != nil {
				log.Warn("step-down incomplete; the others take over when this node's session expires", "err", err)
			} else {
				log.Info("stepped down")
			}
		case sig := <-sigs:
			log.Warn("second signal: stopping without waiting", "signal", sig.String())
		}
		return nil
	case <-st.Done():
		return fmt.Errorf("the store stopped: %w", st.Err())
	case <-n.Done():
		return errors.New("the node stopped on its own")
	case <-ctx.Done():
		return nil
	}
}

// waitReachable lists the cluster's prefix until the store answers,
// logging each failure and backing off. It returns false if ctx ends, or
// with an error if the store refuses this node's credentials or
// permissions, which no retry mends.
func waitReachable(ctx context.Context, st core.Store, cfg core.Config, log *slog.Logger) (bool, error) {
	delay := cfg.RetryMin
	for attempt := 1; ; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
		_, err := st.List(rctx, cfg.Prefix)
		cancel()
		if err == nil {
			if attempt > 1 {
				log.Info("store reachable", "after_attempts", attempt)
			}
			return true, nil
		}
		if ctx.Err() != nil {
			return false, nil
		}
		if errors.Is(err, core.ErrDenied) {
			return false, fmt.Errorf("the store refuses this node: check store.auth and the store's users and roles (the node needs read and write access under %q): %w", cfg.Prefix, err)
		}
		log.Warn("store unreachable; retrying", "attempt", attempt, "retry_in", delay, "err", err)
		select {
		case <-ctx.Done():
			return false, nil
		case <-time.After(delay):
		}
		delay = min(2*delay, cfg.RetryMax)
	}
}
