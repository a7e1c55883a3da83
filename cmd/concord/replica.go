package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/concordha/concord/client"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/config"
	"github.com/concordha/concord/proxy"
	"github.com/concordha/concord/replica"
	"github.com/concordha/concord/replica/agent"
	"github.com/concordha/concord/replica/peer"
)

// nodeAPI is a running node's replica host and its HTTP API: the peers'
// part (checkpoints, handovers, switchovers) and the local services'
// part (on-demand checkpoints).
type nodeAPI struct {
	host   *replica.Host
	client *peer.Client
	srv    *http.Server
	ln     net.Listener
	node   *core.Node
	store  core.Store
	keys   core.Keys
	self   string
	log    *slog.Logger
	done   chan error
	// proxies are the node's running proxies, for GET /v1/proxies; set
	// once they start.
	proxies atomic.Pointer[[]*proxy.Proxy]
}

// switchoverRequest asks a node to move a service's primary role.
type switchoverRequest struct {
	Service string `json:"service"`
	To      string `json:"to,omitempty"`
}

type switchoverAnswer struct {
	Primary string `json:"primary"`
}

// startHost builds the replica host for the node and, if node.api.listen
// is set, starts the node API. The host's Run is left to the caller.
func startHost(f *config.File, rc config.Replica, st core.Store, n *core.Node, log *slog.Logger) (*nodeAPI, error) {
	keys, err := core.NewKeys(f.CoreConfig().Prefix)
	if err != nil {
		return nil, err
	}
	a := &nodeAPI{node: n, store: st, keys: keys, self: f.Node.ID, log: log, done: make(chan error, 1)}
	token := make([]byte, 24)
	if _, err := rand.Read(token); err != nil {
		return nil, err
	}
	apiToken := hex.EncodeToString(token)
	// What the agents (and the daemons they start) need to call the
	// local API: its URL and token and, with TLS, the files to present
	// and verify certificates with (the API requires a client
	// certificate then).
	agentEnv := []string{"CONCORD_API=" + localURL(rc.Listen, rc.TLS != nil), "CONCORD_API_TOKEN=" + apiToken}
	if t := f.Node.API.TLS; rc.TLS != nil {
		agentEnv = append(agentEnv, "CONCORD_API_CA_FILE="+t.CAFile, "CONCORD_API_CERT_FILE="+t.CertFile, "CONCORD_API_KEY_FILE="+t.KeyFile)
	}
	var specs []replica.ServiceSpec
	for _, s := range rc.Services {
		sp := replica.ServiceSpec{
			Name: s.Name, DependsOn: s.DependsOn, Secondaries: s.Secondaries, SyncAcks: s.SyncAcks, Endpoint: s.Endpoint, Drain: s.Drain,
			CheckpointInterval: s.CheckpointInterval, MonitorInterval: s.MonitorInterval,
			MaxRestarts: s.MaxRestarts, RestartWindow: s.RestartWindow,
		}
		if ag := s.Agent; ag != nil {
			p, err := agent.New(agent.Config{
				Command: ag.Command, Args: ag.Args, Dir: ag.Dir, Params: ag.Params,
				Env: agentEnv,
				Timeouts: agent.Timeouts{
					Start: ag.Start, Stop: ag.Stop, Promote: ag.Promote, Demote: ag.Demote,
					Monitor: ag.Monitor, Checkpoint: ag.Checkpoint, Restore: ag.Restore,
				},
				Logger: log,
			})
			if err != nil {
				return nil, fmt.Errorf("services: %q: %w", s.Name, err)
			}
			sp.Provider = p
			// The host's own bound on a call comes after the agent's.
			sp.ActionTimeout = max(ag.Start, ag.Stop, ag.Promote, ag.Demote, ag.Monitor, ag.Checkpoint, ag.Restore) + 10*time.Second
		}
		specs = append(specs, sp)
	}
	hcfg := replica.Config{Node: f.Node.ID, DataDir: rc.DataDir, Services: specs, Logger: log, Plan: a.plan, Store: st, Keys: keys}
	if rc.Listen != "" {
		a.client, err = peer.NewClient(peer.ClientConfig{Node: f.Node.ID, Secret: rc.Secret, TLS: rc.ClientTLS})
		if err != nil {
			return nil, err
		}
		hcfg.Sender = sender{a.client, f.Node.ID}
		// The replica manager, one tier up: every node with an API
		// provides it (see withManager), and the elected one runs it.
		hcfg.Services = append(hcfg.Services, replica.ServiceSpec{
			Name: replica.ManagerService,
			Provider: replica.NewManager(replica.ManagerConfig{
				Node: f.Node.ID, Keys: keys, Store: st, Caller: a.client, Logger: log,
			}),
			CheckpointInterval: time.Hour, MonitorInterval: 2 * time.Second,
			MaxRestarts: 3, RestartWindow: 5 * time.Minute,
		})
	}
	a.host, err = replica.New(hcfg, n)
	if err != nil {
		return nil, err
	}
	if rc.Listen == "" {
		return a, nil
	}
	incoming := filepath.Join(rc.DataDir, "incoming")
	if err := os.MkdirAll(incoming, 0o700); err != nil {
		return nil, fmt.Errorf("node.data_dir: %w", err)
	}
	ps, err := peer.NewServer(peer.ServerConfig{
		Node: f.Node.ID, Secret: rc.Secret, SpoolDir: incoming, Logger: log,
		Admit: func(h peer.Header) error { return a.host.Admit(h.Service, h.Stamp) },
		Apply: func(ctx context.Context, h peer.Header, body io.Reader, _ int64) error {
			return a.host.Apply(ctx, h.Service, h.Stamp, body)
		},
	})
	if err != nil {
		return nil, err
	}
	_ = ps.Handle("handover", func(ctx context.Context, from string, raw json.RawMessage) (any, error) {
		var req switchoverRequest
		if err := decodeStrict(raw, &req); err != nil {
			return nil, err
		}
		return nil, a.host.Handover(ctx, req.Service, req.To)
	})
	_ = ps.Handle("switchover", func(ctx context.Context, from string, raw json.RawMessage) (any, error) {
		var req switchoverRequest
		if err := decodeStrict(raw, &req); err != nil {
			return nil, err
		}
		p, err := a.switchover(ctx, req)
		return switchoverAnswer{Primary: p}, err
	})
	mux := http.NewServeMux()
	mux.Handle("/v1/peer/", ps)
	mux.Handle("POST /v1/services/{service}/checkpoint", replica.LocalAPI(a.host, apiToken))
	health := replica.HealthAPI(a.host)
	mux.Handle("GET /v1/services/", health)
	mux.Handle("GET /v1/health", health)
	mux.Handle("GET /v1/cluster", health)
	mux.HandleFunc("GET /v1/proxies", a.serveProxies)
	a.ln, err = net.Listen("tcp", rc.Listen)
	if err != nil {
		return nil, fmt.Errorf("node.api.listen %q: %w (is another process using the port?)", rc.Listen, err)
	}
	a.srv = &http.Server{Handler: mux, TLSConfig: rc.TLS, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() {
		var err error
		if rc.TLS != nil {
			err = a.srv.ServeTLS(a.ln, "", "")
		} else {
			err = a.srv.Serve(a.ln)
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		a.done <- err
	}()
	log.Info("node API listening", "listen", rc.Listen, "advertise", rc.Advertise, "tls", rc.TLS != nil)
	return a, nil
}

// close stops the API server.
func (a *nodeAPI) close() {
	if a.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = a.srv.Shutdown(ctx)
		<-a.done
	}
	if a.client != nil {
		a.client.Close()
	}
}

// switchover asks the replica manager for a planned move of a service's
// primary role: it writes the request into the store, where the manager
// (on whichever node runs it now) finds it, and waits for its outcome.
func (a *nodeAPI) switchover(ctx context.Context, req switchoverRequest) (string, error) {
	if err := core.ValidateName("service", req.Service); err != nil {
		return "", fmt.Errorf("%w: %v", core.ErrInvalidArgument, err)
	}
	key := a.keys.Switchover(req.Service)
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return "", err
	}
	rec := replica.SwitchoverRecord{ID: hex.EncodeToString(id), To: req.To, State: replica.SwitchoverPending, Updated: time.Now().UTC()}
	val, _ := json.Marshal(rec)
	kv, err := a.store.Get(ctx, key)
	switch {
	case errors.Is(err, core.ErrNotFound):
		_, err = a.store.Create(ctx, key, val)
	case err != nil:
	default:
		old, derr := replica.DecodeSwitchover(kv)
		busy := derr == nil && (old.State == replica.SwitchoverPending || old.State == replica.SwitchoverRunning)
		if busy && time.Since(old.Updated) < switchoverStale {
			return "", fmt.Errorf("a switchover of %q is already under way (request %s, %s): wait for it", req.Service, old.ID, old.State)
		}
		_, err = a.store.CompareAndSwap(ctx, key, val, kv.Version)
	}
	if err != nil {
		return "", fmt.Errorf("writing the switchover request %s: %w", key, err)
	}
	a.log.Info("switchover requested", "switchover_of", req.Service, "to", req.To, "request", rec.ID)
	for {
		kv, err := a.store.Get(ctx, key)
		if err == nil {
			got, derr := replica.DecodeSwitchover(kv)
			if derr == nil && got.ID != rec.ID {
				return "", fmt.Errorf("the switchover request was replaced by another (%s)", got.ID)
			}
			switch got.State {
			case replica.SwitchoverDone:
				return got.Primary, nil
			case replica.SwitchoverFailed:
				return "", errors.New(got.Detail)
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no outcome of the switchover of %q yet (is a replica manager running? see the logs): %w", req.Service, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// switchoverStale is how old a pending or running request must be before
// a new one may replace it: its manager is presumed gone.
const switchoverStale = 2 * time.Minute

// localURL is the URL a process on this machine reaches the API at: a
// listen address on every interface (":7101", "0.0.0.0:7101") is reached
// on loopback.
func localURL(listen string, tls bool) string {
	scheme := "http"
	if tls {
		scheme = "https"
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return scheme + "://" + listen
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// plan reads the replica manager's plan for a service.
func (a *nodeAPI) plan(ctx context.Context, service string) ([]string, error) {
	kv, err := a.store.Get(ctx, a.keys.Plan(service))
	if err != nil {
		return nil, err
	}
	p, err := replica.DecodePlan(kv)
	return p.Order, err
}

// withManager adds the replica manager's service to a node's services
// when the node has an API, so that the node can be elected to run it.
func withManager(cfg core.Config, rc config.Replica) core.Config {
	if rc.Listen != "" {
		cfg.Services = append(cfg.Services, core.ServiceConfig{Name: replica.ManagerService})
	}
	return cfg
}

// sender adapts the peer client to replica.Sender.
type sender struct {
	c    *peer.Client
	node string
}

func (s sender) SendCheckpoint(ctx context.Context, addr, service string, st core.Stamp, body io.Reader) error {
	return s.c.SendCheckpoint(ctx, addr, peer.Header{Service: service, From: s.node, Stamp: st}, body)
}

// decodeStrict decodes one JSON request, refusing unknown fields.
func decodeStrict(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: bad request: %v", core.ErrInvalidArgument, err)
	}
	return nil
}

func switchoverCmd() *cobra.Command {
	var path, to string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "switchover SERVICE",
		Short: "Move a service's primary role to another node, in a planned way",
		Long: `switchover asks the cluster to move SERVICE's primary role: the primary takes
a last checkpoint, sends it, and resigns, so that the freshest secondary
(or NODE, given --to, which gets the last checkpoint alone) takes over with
nothing lost. It talks to the node API of the node whose config it is given
(node.api.listen, authenticated with cluster.secret_file), and prints the
new primary.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := loadConfig(path)
			if err != nil {
				return err
			}
			rc, err := f.ReplicaConfig()
			if err != nil {
				return err
			}
			if rc.Listen == "" {
				return errors.New("the config sets no node.api.listen: switchover talks to a node's API")
			}
			c, err := peer.NewClient(peer.ClientConfig{Node: f.Node.ID, Secret: rc.Secret, TLS: rc.ClientTLS, Timeout: timeout})
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			var ans switchoverAnswer
			if err := c.Call(ctx, rc.Listen, "switchover", switchoverRequest{Service: args[0], To: to}, &ans); err != nil {
				return fmt.Errorf("switchover of %q: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: the primary is now %s\n", args[0], ans.Primary)
			return nil
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().StringVar(&to, "to", "", "the node to hand the primary role to (default: the freshest secondary)")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the new primary")
	return cmd
}

// proxyState is one proxy in GET /v1/proxies.
type proxyState struct {
	Service string      `json:"service"`
	Listen  string      `json:"listen"`
	Stats   proxy.Stats `json:"stats"`
	// Forwarding is the primary the proxy forwards to ("" while it holds
	// connections); Why says why it holds.
	Forwarding string `json:"forwarding,omitempty"`
	Token      int64  `json:"token,omitempty"`
	Draining   bool   `json:"draining,omitempty"`
	Why        string `json:"why,omitempty"`
}

// serveProxies answers GET /v1/proxies: the node's proxies, their
// counters and what each forwards to, as JSON.
func (a *nodeAPI) serveProxies(w http.ResponseWriter, _ *http.Request) {
	out := []proxyState{}
	if ps := a.proxies.Load(); ps != nil {
		for _, p := range *ps {
			st := proxyState{Service: p.Service(), Stats: p.Stats()}
			if addr := p.Addr(); addr != nil {
				st.Listen = addr.String()
			}
			u := p.Current()
			switch {
			case u.Valid:
				st.Forwarding, st.Token = u.Endpoint.Addr, u.Endpoint.Token
			case u.Draining:
				st.Draining, st.Token, st.Why = true, u.Endpoint.Token, u.Why
			default:
				st.Why = u.Why
			}
			out = append(out, st)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// startProxies runs the node's proxies (proxies[] in the config), each
// following its service's primary through the client package; the
// function it returns stops them and waits for them.
func startProxies(f *config.File, rc config.Replica, st core.Store, prefix string, api *nodeAPI, log *slog.Logger) (func(), error) {
	// In a store outage, a proxy keeps the last primary for as long as
	// that primary's node API proves its session valid; the nodes' APIs
	// share node.api.tls.
	hc := &http.Client{Timeout: 2 * time.Second}
	scheme := "http"
	if rc.ClientTLS != nil {
		hc.Transport = &http.Transport{TLSClientConfig: rc.ClientTLS}
		scheme = "https"
	}
	r, err := client.NewWithOptions(st, prefix, client.Options{Check: client.HTTPCheck(hc, scheme)})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, len(f.Proxies))
	var ps []*proxy.Proxy
	pcs := f.ProxyConfigs()
	for i, pc := range pcs {
		p, err := proxy.New(proxy.Config{
			Service: pc.Service, Listen: pc.Listen, HoldTimeout: pc.HoldTimeout, DialTimeout: pc.DialTimeout,
			Source: proxy.ResolverSource{Resolver: r, Service: pc.Service}, Logger: log,
		})
		if err != nil {
			cancel()
			return nil, fmt.Errorf("proxies[%d]: %w", i, err)
		}
		ps = append(ps, p)
	}
	if api != nil {
		api.proxies.Store(&ps)
	}
	for i, p := range ps {
		go func() {
			err := p.Run(ctx)
			if err != nil {
				log.Error("proxy failed; this node serves no proxy there", "index", i, "err", err)
			}
			done <- err
		}()
	}
	for i, pc := range pcs {
		log.Info("proxy running", "service", pc.Service, "listen", pc.Listen, "hold_timeout", pc.HoldTimeout, "index", i)
	}
	return func() {
		cancel()
		for range ps {
			<-done
		}
		hc.CloseIdleConnections()
	}, nil
}
