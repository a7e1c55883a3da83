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
	"time"

	"github.com/spf13/cobra"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/config"
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
	self   string
	log    *slog.Logger
	done   chan error
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
func startHost(f *config.File, n *core.Node, log *slog.Logger) (*nodeAPI, error) {
	rc, err := f.ReplicaConfig()
	if err != nil {
		return nil, err
	}
	a := &nodeAPI{node: n, self: f.Node.ID, log: log, done: make(chan error, 1)}
	token := make([]byte, 24)
	if _, err := rand.Read(token); err != nil {
		return nil, err
	}
	apiToken := hex.EncodeToString(token)
	scheme := "http"
	if rc.TLS != nil {
		scheme = "https"
	}
	var specs []replica.ServiceSpec
	for _, s := range rc.Services {
		sp := replica.ServiceSpec{
			Name: s.Name, DependsOn: s.DependsOn, Secondaries: s.Secondaries, SyncAcks: s.SyncAcks,
			CheckpointInterval: s.CheckpointInterval, MonitorInterval: s.MonitorInterval,
			MaxRestarts: s.MaxRestarts, RestartWindow: s.RestartWindow,
		}
		if ag := s.Agent; ag != nil {
			p, err := agent.New(agent.Config{
				Command: ag.Command, Args: ag.Args, Dir: ag.Dir, Params: ag.Params,
				Env: []string{"CONCORD_API=" + scheme + "://" + rc.Listen, "CONCORD_API_TOKEN=" + apiToken},
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
	hcfg := replica.Config{Node: f.Node.ID, DataDir: rc.DataDir, Services: specs, Logger: log}
	if rc.Listen != "" {
		a.client, err = peer.NewClient(peer.ClientConfig{Node: f.Node.ID, Secret: rc.Secret, TLS: rc.ClientTLS})
		if err != nil {
			return nil, err
		}
		hcfg.Sender = sender{a.client, f.Node.ID}
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
	mux.Handle("/v1/services/", replica.LocalAPI(a.host, apiToken))
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

// switchover carries out a planned move of a service's primary role: it
// asks the current primary to hand over (to req.To, if set), then waits
// for the new primary and returns it.
func (a *nodeAPI) switchover(ctx context.Context, req switchoverRequest) (string, error) {
	st, err := a.node.Status(req.Service)
	if err != nil {
		return "", err
	}
	old := st.Primary
	if old == "" {
		return "", fmt.Errorf("%q has no primary now; nothing to switch over", req.Service)
	}
	if req.To == old {
		return "", fmt.Errorf("%w: %q is already the primary of %q", core.ErrInvalidArgument, req.To, req.Service)
	}
	members, err := a.node.Members(ctx)
	if err != nil {
		return "", err
	}
	if req.To != "" {
		if _, ok := members[req.To].Services[req.Service]; !ok {
			return "", fmt.Errorf("%w: %q is not a live provider of %q", core.ErrInvalidArgument, req.To, req.Service)
		}
	}
	if old == a.self {
		err = a.host.Handover(ctx, req.Service, req.To)
	} else {
		addr := members[old].Address
		if addr == "" {
			return "", fmt.Errorf("the primary %q publishes no API address", old)
		}
		err = a.client.Call(ctx, addr, "handover", req, nil)
	}
	if err != nil {
		return "", fmt.Errorf("%s refused to hand %q over: %w", old, req.Service, err)
	}
	for {
		st, err := a.node.Status(req.Service)
		if err != nil {
			return "", err
		}
		if st.Primary != "" && st.Primary != old {
			return st.Primary, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%q was handed over but no new primary appeared: %w", req.Service, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
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
