package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/concordha/concord/backends/etcd"
	"github.com/concordha/concord/backends/etcd/embedded"
	"github.com/concordha/concord/backends/storetest"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/config"
	"github.com/concordha/concord/internal/syncbuf"
)

// syncBuffer is a log sink that tests read while nodes write.
type syncBuffer = syncbuf.Buffer

// writeConfig writes a config file into a temporary directory.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "concord.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// execute runs the root command with args and returns its output.
func execute(args ...string) (string, error) {
	cmd := rootCmd()
	var out bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	err := cmd.Execute()
	return out.String(), err
}

// startEtcd starts an embedded etcd for a test, with a short heartbeat so
// that it grants 1s leases.
func startEtcd(t *testing.T, clientURL string) *embedded.Server {
	t.Helper()
	srv, err := embedded.Start(context.Background(), embedded.Config{
		DataDir: t.TempDir(), ClientURL: clientURL,
		HeartbeatInterval: 50 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

// observer is the test's own client of the store.
func observer(t *testing.T, srv *embedded.Server) *etcd.Store {
	t.Helper()
	st, err := etcd.New(etcd.Config{Endpoints: srv.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// primaryOf reads who holds the primary record of svc ("" if nobody).
func primaryOf(ctx context.Context, st core.Store, svc string) (string, error) {
	keys, _ := core.NewKeys("concord/")
	kv, err := st.Get(ctx, keys.Primary(svc))
	if errors.Is(err, core.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	rec, err := core.DecodePrimary(kv)
	if err != nil {
		return "", err
	}
	return rec.Node, nil
}

// waitPrimary waits until the primary record of svc names a node other
// than not, and returns it.
func waitPrimary(t *testing.T, st core.Store, svc, not string, within time.Duration) string {
	t.Helper()
	var got string
	storetest.Eventually(t, within, "a primary of "+svc+" other than "+not, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p, err := primaryOf(ctx, st, svc)
		got = p
		if err == nil && (p == "" || p == not) {
			err = fmt.Errorf("the primary is %q", p)
		}
		return err
	})
	return got
}

// runner runs runNode in the background, as `concord run` would.
type runner struct {
	logs *syncBuffer
	sigs chan os.Signal
	stop context.CancelFunc
	err  chan error
}

func startRunner(t *testing.T, path string, environ ...string) *runner {
	t.Helper()
	f, err := config.LoadEnv(path, environ)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	r := &runner{logs: &syncBuffer{}, sigs: make(chan os.Signal, 2), err: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	log := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() { r.err <- runNode(ctx, f, log, r.sigs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.err:
		case <-time.After(30 * time.Second):
			t.Errorf("runNode did not return after its context ended:\n%s", r.logs)
		}
	})
	return r
}

// terminate sends SIGTERM and waits for runNode to return.
func (r *runner) terminate(t *testing.T) error {
	t.Helper()
	r.sigs <- syscall.SIGTERM
	select {
	case err := <-r.err:
		r.err <- err // for the cleanup
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("runNode did not return after SIGTERM:\n%s", r.logs)
		return nil
	}
}

func (r *runner) waitLog(t *testing.T, within time.Duration, want string) {
	t.Helper()
	storetest.Eventually(t, within, "the log line "+want, func() error {
		if !strings.Contains(r.logs.String(), want) {
			return errors.New("not logged yet")
		}
		return nil
	})
}

func etcdConfig(node string, endpoints []string, ttl time.Duration, services string) string {
	return fmt.Sprintf(`node:
  id: %s
store:
  type: etcd
  endpoints: [%s]
  session_ttl: %v
  op_timeout: 300ms
  dial_timeout: 1s
  retry_min: 20ms
  retry_max: 200ms
%s`, node, strings.Join(endpoints, ", "), ttl, services)
}

// embeddedConfig is a node's config on the embedded etcd, with short test
// timings: embedded holds the lines under store.embedded (data_dir, in a
// temporary directory, comes first), services the services section.
func embeddedConfig(t *testing.T, node, embedded, services string) string {
	return fmt.Sprintf("node:\n  id: %s\nstore:\n  type: embedded\n  session_ttl: 2s\n  op_timeout: 500ms\n  retry_min: 20ms\n  retry_max: 200ms\n  embedded:\n    data_dir: %s\n%s%s",
		node, filepath.Join(t.TempDir(), "data"), embedded, services)
}

const oneService = `services:
  - name: db
`

func TestValidateExamples(t *testing.T) {
	paths, err := filepath.Glob("../../configs/*.yaml")
	if err != nil || len(paths) < 5 {
		t.Fatalf("configs/: %v %v", paths, err)
	}
	// The kvstore configs name files relative to the directory concord
	// starts in: the agent's binary and the cluster secret. Validate them
	// from a directory that has both (the agent only has to exist and be
	// executable here).
	work := t.TempDir()
	if err := os.WriteFile(filepath.Join(work, "kvstore"), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "cluster.secret"), []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		paths[i] = abs
	}
	t.Chdir(work)
	for _, p := range paths {
		out, err := execute("validate", "--config", p)
		if err != nil {
			t.Errorf("validate %s: %v\n%s", p, err, out)
			continue
		}
		if !strings.Contains(out, "valid") || !strings.Contains(out, "service") {
			t.Errorf("validate %s printed:\n%s", p, out)
		}
	}
}

// TestBadConfigNamesFileFieldAndFix: run and validate refuse a bad config
// before touching any store, naming the file, the field and the fix.
func TestBadConfigNamesFileFieldAndFix(t *testing.T) {
	cases := []struct{ name, body, want string }{
		{"wrong type", "node: {id: a}\nstore: {session_ttl: ten}\n" + oneService, `store.session_ttl: "ten" is not a duration; write e.g. 10s`},
		{"missing field", "store: {type: embedded}\n" + oneService, "node.id"},
		{"unknown key", "node: {id: a}\nstore: {sesion_ttl: 10s}\n" + oneService, "did you mean store.session_ttl"},
		{"TTL shorter than the renew interval", "node: {id: a}\nstore: {session_ttl: 3s, keepalive_interval: 4s}\n" + oneService, "store.keepalive_interval"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := writeConfig(t, c.body)
			for _, verb := range []string{"validate", "run"} {
				out, err := execute(verb, "--config", p)
				if err == nil {
					t.Fatalf("%s accepted a bad config:\n%s", verb, out)
				}
				if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.want) {
					t.Errorf("%s: error %q does not name the file %s and %q", verb, err, p, c.want)
				}
			}
		})
	}
	if _, err := execute("run"); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("run without a config: %v", err)
	}
}

// TestRunSIGTERMResigns: a primary that gets SIGTERM resigns, and another
// node takes over long before the session TTL could have expired it.
func TestRunSIGTERMResigns(t *testing.T) {
	srv := startEtcd(t, "")
	obs := observer(t, srv)
	const ttl = 30 * time.Second
	a := startRunner(t, writeConfig(t, etcdConfig("a", srv.Endpoints(), ttl, "services:\n  - {name: db, priority: 9}\n")))
	if p := waitPrimary(t, obs, "db", "", 10*time.Second); p != "a" {
		t.Fatalf("primary = %s, want a (the higher priority)", p)
	}
	a.waitLog(t, 5*time.Second, "this node is primary")
	b := startRunner(t, writeConfig(t, etcdConfig("b", srv.Endpoints(), ttl, oneService)))
	b.waitLog(t, 10*time.Second, "service=db role=spare")

	if err := a.terminate(t); err != nil {
		t.Fatalf("SIGTERM: runNode returned %v\n%s", err, a.logs)
	}
	// Without the resignation b would wait for a's 30s session to expire.
	if p := waitPrimary(t, obs, "db", "a", ttl/3); p != "b" {
		t.Fatalf("primary after SIGTERM = %s, want b", p)
	}
	for _, want := range []string{"resigning every service", "stepped down"} {
		if !strings.Contains(a.logs.String(), want) {
			t.Errorf("a's log lacks %q:\n%s", want, a.logs)
		}
	}
}

// TestRunRetriesAnUnreachableStore: a node whose store is down at start
// keeps retrying with backoff, says so, and joins once the store is up.
func TestRunRetriesAnUnreachableStore(t *testing.T) {
	url, err := embedded.FreeLoopbackURL()
	if err != nil {
		t.Fatal(err)
	}
	a := startRunner(t, writeConfig(t, etcdConfig("a", []string{url}, 2*time.Second, oneService)))
	storetest.Eventually(t, 20*time.Second, "three logged retries", func() error {
		if n := strings.Count(a.logs.String(), "store unreachable; retrying"); n < 3 {
			return fmt.Errorf("%d retries logged", n)
		}
		return nil
	})
	select {
	case err := <-a.err:
		t.Fatalf("runNode gave up on an unreachable store: %v\n%s", err, a.logs)
	default:
	}
	srv := startEtcd(t, url)
	if p := waitPrimary(t, observer(t, srv), "db", "", 20*time.Second); p != "a" {
		t.Fatalf("primary = %s, want a", p)
	}
	a.waitLog(t, 5*time.Second, "store reachable")
}

// TestRunRetriesAnUnreachableStoreWithAuth: with a username, the etcd
// client authenticates as it is made; an unreachable store is retried
// there too, not reported as a failure.
func TestRunRetriesAnUnreachableStoreWithAuth(t *testing.T) {
	url, err := embedded.FreeLoopbackURL()
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Replace(etcdConfig("a", []string{url}, 2*time.Second, oneService), "  retry_max: 200ms\n", "  retry_max: 200ms\n  auth: {username: concord, password: secret}\n", 1)
	a := startRunner(t, writeConfig(t, body))
	storetest.Eventually(t, 20*time.Second, "three logged retries", func() error {
		if n := strings.Count(a.logs.String(), "etcd unreachable; retrying"); n < 3 {
			return fmt.Errorf("%d retries logged", n)
		}
		return nil
	})
	select {
	case err := <-a.err:
		t.Fatalf("runNode gave up on an unreachable store: %v\n%s", err, a.logs)
	default:
	}
}

// TestRunReportsGarbageRecords: records that are not concord's are
// reported with their keys, and the election overwrites them.
func TestRunReportsGarbageRecords(t *testing.T) {
	srv := startEtcd(t, "")
	obs := observer(t, srv)
	ctx := context.Background()
	for _, k := range []string{"concord/primary/db", "concord/cand/db/a"} {
		if _, err := obs.Create(ctx, k, []byte("\x00garbage")); err != nil {
			t.Fatal(err)
		}
	}
	a := startRunner(t, writeConfig(t, etcdConfig("a", srv.Endpoints(), 2*time.Second, oneService)))
	if p := waitPrimary(t, obs, "db", "", 20*time.Second); p != "a" {
		t.Fatalf("primary = %s, want a", p)
	}
	for _, k := range []string{"concord/primary/db", "concord/cand/db/a"} {
		if !strings.Contains(a.logs.String(), k) {
			t.Errorf("the log does not name the bad record %s:\n%s", k, a.logs)
		}
	}
}

// TestRunEmbeddedCluster: three nodes form an embedded etcd cluster among
// themselves; when the primary's process goes, the other two keep a
// quorum and elect a successor.
func TestRunEmbeddedCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three etcd members")
	}
	names := []string{"a", "b", "c"}
	peers, clients := map[string]string{}, map[string]string{}
	var initial []string
	for _, n := range names {
		var err error
		if peers[n], err = embedded.FreeLoopbackURL(); err != nil {
			t.Fatal(err)
		}
		if clients[n], err = embedded.FreeLoopbackURL(); err != nil {
			t.Fatal(err)
		}
		initial = append(initial, n+"="+peers[n])
	}
	runners := map[string]*runner{}
	for i, n := range names {
		body := embeddedConfig(t, n,
			fmt.Sprintf("    client_url: %s\n    peer_url: %s\n    initial_cluster: %s\n    cluster_token: test\n", clients[n], peers[n], strings.Join(initial, ",")),
			fmt.Sprintf("services:\n  - {name: db, priority: %d}\n", 3-i))
		runners[n] = startRunner(t, writeConfig(t, body))
	}
	obs, err := etcd.New(etcd.Config{Endpoints: []string{clients["b"], clients["c"]}})
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	// The first node to join is elected, and stays (sticky), whatever
	// the priorities of those that join later.
	first := waitPrimary(t, obs, "db", "", 60*time.Second)
	runners[first].stop() // its process goes, and its etcd member with it
	next := waitPrimary(t, obs, "db", first, 60*time.Second)
	if want := map[string]string{"a": "b", "b": "a", "c": "a"}[first]; next != want {
		t.Fatalf("primary after %s left = %s, want %s (the highest priority left)", first, next, want)
	}
}

// TestRunCommandOnSIGTERM runs `concord run` itself and sends the process
// a real SIGTERM: the command resigns, leaves and returns without error.
func TestRunCommandOnSIGTERM(t *testing.T) {
	srv := startEtcd(t, "")
	obs := observer(t, srv)
	path := writeConfig(t, etcdConfig("a", srv.Endpoints(), 30*time.Second, oneService))
	logs := &syncBuffer{}
	cmd := rootCmd()
	cmd.SetArgs([]string{"run", "--config", path})
	cmd.SetOut(logs)
	cmd.SetErr(logs)
	done := make(chan error, 1)
	go func() { done <- cmd.Execute() }()
	// The command has installed its signal handler once the node runs.
	storetest.Eventually(t, 20*time.Second, "node a primary", func() error {
		if !strings.Contains(logs.String(), "this node is primary") {
			return errors.New("not yet")
		}
		return nil
	})
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v after SIGTERM:\n%s", err, logs)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("run still running 20s after SIGTERM:\n%s", logs)
	}
	if !strings.Contains(logs.String(), "stepped down") {
		t.Errorf("no step-down in the log:\n%s", logs)
	}
	// The resignation cleared the primary record: no 30s wait for the TTL.
	if p, err := primaryOf(context.Background(), obs, "db"); err != nil || p != "" {
		t.Errorf("primary record after SIGTERM names %q (%v), want none", p, err)
	}
}

// TestRunRetriesAnEmbeddedStoreThatCannotStart: while the embedded etcd
// cannot start (its client port is taken), the node says why and retries;
// it starts once the port is free.
func TestRunRetriesAnEmbeddedStoreThatCannotStart(t *testing.T) {
	url, err := embedded.FreeLoopbackURL()
	if err != nil {
		t.Fatal(err)
	}
	squatter, err := net.Listen("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	a := startRunner(t, writeConfig(t, embeddedConfig(t, "a", "    client_url: "+url+"\n", oneService)))
	storetest.Eventually(t, 30*time.Second, "two logged retries", func() error {
		if n := strings.Count(a.logs.String(), "embedded etcd could not start; retrying"); n < 2 {
			return fmt.Errorf("%d retries logged", n)
		}
		return nil
	})
	_ = squatter.Close()
	a.waitLog(t, 60*time.Second, "this node is primary")
}

// TestRunSurvivesTheStoreGoing: when the store goes away under a running
// primary, the node stops acting as primary once its session cannot be
// renewed, says so, keeps trying, and is elected again when the store is
// back.
func TestRunSurvivesTheStoreGoing(t *testing.T) {
	srv := startEtcd(t, "")
	cfg := srv.Config()
	a := startRunner(t, writeConfig(t, etcdConfig("a", srv.Endpoints(), 2*time.Second, oneService)))
	a.waitLog(t, 20*time.Second, "this node is primary")
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	a.waitLog(t, 20*time.Second, "this node is no longer primary")
	a.waitLog(t, 20*time.Second, "cannot join the cluster")
	srv2, err := embedded.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	defer srv2.Close()
	storetest.Eventually(t, 60*time.Second, "a primary again", func() error {
		if n := strings.Count(a.logs.String(), "this node is primary"); n < 2 {
			return fmt.Errorf("primary %d times", n)
		}
		return nil
	})
	select {
	case err := <-a.err:
		t.Fatalf("runNode returned while the store was away: %v", err)
	default:
	}
	// etcd renewed every lease when it restarted, so the node's lost
	// session still held its member record: the node ended it instead of
	// waiting a TTL for it to expire.
	if !strings.Contains(a.logs.String(), "ended this node's previous session") {
		t.Errorf("the node did not end its own lingering session:\n%s", a.logs)
	}
}

// TestOpenStoreKeepsCapabilities: the node gets the backend itself, so
// that it batches with Txn and can end its own stale sessions.
func TestOpenStoreKeepsCapabilities(t *testing.T) {
	url, err := embedded.FreeLoopbackURL()
	if err != nil {
		t.Fatal(err)
	}
	peer, err := embedded.FreeLoopbackURL()
	if err != nil {
		t.Fatal(err)
	}
	for _, body := range []string{
		"node: {id: a}\nstore: {type: memory}\n" + oneService,
		fmt.Sprintf("node: {id: a}\nstore:\n  type: embedded\n  embedded: {data_dir: %s, client_url: %s, peer_url: %s}\n%s",
			filepath.Join(t.TempDir(), "data"), url, peer, oneService),
	} {
		f, err := config.LoadEnv(writeConfig(t, body), nil)
		if err != nil {
			t.Fatal(err)
		}
		st, err := openStore(context.Background(), f, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("%s: %v", f.Store.Type, err)
		}
		if _, ok := st.store.(core.Txner); !ok {
			t.Errorf("%s: the node's store is not a Txner", f.Store.Type)
		}
		if _, ok := st.store.(core.Expirer); !ok {
			t.Errorf("%s: the node's store is not an Expirer", f.Store.Type)
		}
		if err := st.Close(); err != nil {
			t.Errorf("%s: Close: %v", f.Store.Type, err)
		}
	}
}

// TestRunRefusedByTheStore: a node whose credentials etcd refuses, or
// whose user may not touch the cluster's prefix, stops with an error that
// says what to check, instead of retrying for ever.
func TestRunRefusedByTheStore(t *testing.T) {
	srv := startEtcd(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for i, step := range []func() error{
		func() error { _, err := admin.RoleAdd(ctx, "root"); return err },
		func() error { _, err := admin.UserAdd(ctx, "root", "root-secret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.UserAdd(ctx, "concord", "secret"); return err }, // no role: no access
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatalf("auth setup, step %d: %v", i, err)
		}
	}
	for _, c := range []struct{ password, want string }{
		{"wrong", "authentication failed"},
		{"secret", "check store.auth"},
	} {
		body := strings.Replace(etcdConfig("a", srv.Endpoints(), 2*time.Second, oneService), "  retry_max: 200ms\n", "  retry_max: 200ms\n  auth: {username: concord, password: "+c.password+"}\n", 1)
		f, err := config.LoadEnv(writeConfig(t, body), nil)
		if err != nil {
			t.Fatal(err)
		}
		logs := &syncBuffer{}
		done := make(chan error, 1)
		go func() { done <- runNode(ctx, f, slog.New(slog.NewTextHandler(logs, nil)), make(chan os.Signal)) }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, core.ErrDenied) {
				t.Errorf("password %q: runNode returned %v, want core.ErrDenied saying %q", c.password, err, c.want)
			}
		case <-ctx.Done():
			t.Fatalf("password %q: runNode still retrying a refusal:\n%s", c.password, logs)
		}
	}
}

// TestRunEmbeddedDataDirUnusable: a data directory that cannot be made
// fails at once, naming the key, instead of being retried for ever.
func TestRunEmbeddedDataDirUnusable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	path := writeConfig(t, fmt.Sprintf("node: {id: a}\nstore:\n  embedded: {data_dir: %s}\n%s", filepath.Join(file, "data"), oneService))
	f, err := config.LoadEnv(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = runNode(ctx, f, slog.New(slog.DiscardHandler), make(chan os.Signal))
	if err == nil || !strings.Contains(err.Error(), "store.embedded.data_dir") || ctx.Err() != nil {
		t.Fatalf("runNode = %v (context: %v), want an error naming store.embedded.data_dir at once", err, ctx.Err())
	}
}
