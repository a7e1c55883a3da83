//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dcontainer "github.com/moby/moby/api/types/container"
	mobynet "github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcnet "github.com/testcontainers/testcontainers-go/network"
)

// The images, overridable from the environment. `make images` builds
// them locally under exactly these names.
var (
	etcdImage      = envOr("CONCORD_ETCD_IMAGE", "concord-test/etcd:v3.7.3")
	consulImage    = envOr("CONCORD_CONSUL_IMAGE", "hashicorp/consul:1.16.3")
	zookeeperImage = envOr("CONCORD_ZOOKEEPER_IMAGE", "zookeeper:3.8.0")
)

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Raft timing of the single etcd server: etcd grants leases no shorter
// than 1.5 election timeouts (rounded up to whole seconds), so this one
// grants 1s leases, as backends/etcd's own test servers do.
const (
	etcdHeartbeat       = 50 * time.Millisecond
	etcdElectionTimeout = 500 * time.Millisecond
)

// Bounds of container operations.
const (
	startTimeout = 2 * time.Minute // create, start and become ready
	readyTimeout = 90 * time.Second
	stopTimeout  = 10 * time.Second // docker stop's grace period
)

// spec describes a store server container.
type spec struct {
	Image string
	// Name identifies the container in logs and in its Docker name, which
	// gets a unique suffix; on a network, use Aliases for DNS names.
	Name       string
	Entrypoint []string // nil keeps the image's
	Cmd        []string // nil keeps the image's
	Env        map[string]string
	Files      map[string][]byte // container path -> content, copied in before start
	// Port is the port the tests reach, e.g. "8500/tcp": it is bound to a
	// fixed free port of the host, which stays the same across Stop and
	// Start.
	Port string
	// Ready checks once whether the server is ready at endpoint;
	// startContainer and Start call it until it returns nil, each call
	// bounded by its ctx. nil means no check.
	Ready func(ctx context.Context, endpoint string) error
	// Network is a Docker network to join (see newNetwork), with Aliases
	// as the container's names there.
	Network string
	Aliases []string
}

// container is one running store server.
type container struct {
	spec     spec
	c        *testcontainers.DockerContainer
	endpoint string // host:port on the test's host
}

// Endpoint is host:port, reachable from the test process.
func (c *container) Endpoint() string { return c.endpoint }

// ID is the Docker container's ID.
func (c *container) ID() string { return c.c.GetContainerID() }

// Stop stops the container gracefully (docker stop), keeping its
// filesystem for Start.
func (c *container) Stop(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout+30*time.Second)
	defer cancel()
	d := stopTimeout
	if err := c.c.Stop(ctx, &d); err != nil {
		t.Fatalf("stop %s: %v", c.spec.Name, err)
	}
}

// Kill sends the container SIGKILL (docker kill); Start starts it again.
func (c *container) Kill(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := withDocker(ctx, func(cli client.APIClient) error {
		_, err := cli.ContainerKill(ctx, c.ID(), client.ContainerKillOptions{Signal: "KILL"})
		return err
	})
	if err != nil {
		t.Fatalf("kill %s: %v", c.spec.Name, err)
	}
	// Wait until Docker sees it stopped, so that Start starts it anew.
	eventually(t, 30*time.Second, c.spec.Name+" stopped after SIGKILL", func() error {
		st, err := c.c.State(ctx)
		if err != nil {
			return err
		}
		if st.Running {
			return errors.New("still running")
		}
		return nil
	})
}

// Start starts the stopped container again, on the same host port, and
// waits until it is ready.
func (c *container) Start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := c.c.Start(ctx); err != nil {
		t.Fatalf("start %s again: %v\n%s", c.spec.Name, err, c.Logs())
	}
	if err := c.waitReady(ctx); err != nil {
		t.Fatalf("%s not ready after a restart: %v\n%s", c.spec.Name, err, c.Logs())
	}
}

// Logs returns the last lines of the container's output, for failure
// messages.
func (c *container) Logs() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := c.c.Logs(ctx)
	if err != nil {
		return fmt.Sprintf("(no logs of %s: %v)", c.spec.Name, err)
	}
	defer rc.Close()
	return fmt.Sprintf("--- last lines of %s's output ---\n%s", c.spec.Name, lastLines(rc, 60))
}

// lastLines returns the last n lines of r.
func lastLines(r io.Reader, n int) string {
	var lines []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

func (c *container) waitReady(ctx context.Context) error {
	if c.spec.Ready == nil {
		return nil
	}
	return retryUntil(ctx, readyTimeout, func(ctx context.Context) error {
		return c.spec.Ready(ctx, c.endpoint)
	})
}

// retryUntil calls f, each call bounded by 5s, until it returns nil or
// within passes; it returns f's last error.
func retryUntil(ctx context.Context, within time.Duration, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		err := f(actx)
		acancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready within %v: %w", within, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// hostIP is where the tests reach published ports: the loopback
// address, which the ports are bound to, unless
// TESTCONTAINERS_HOST_OVERRIDE names a remote Docker host (then they are
// bound to every address of that host).
func hostIP() (reach, bind string) {
	if h := os.Getenv("TESTCONTAINERS_HOST_OVERRIDE"); h != "" {
		return h, "0.0.0.0"
	}
	return "127.0.0.1", "127.0.0.1"
}

// freePort returns a TCP port free on the host at the moment.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port), nil
}

// startContainer starts s, bound to a free host port, and waits until
// it is ready; t's cleanup terminates it (printing its last output
// lines first if t failed).
func startContainer(t testing.TB, s spec) *container {
	t.Helper()
	requireDocker(t)
	requireImage(t, s.Image)
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		c, err := createContainer(t, s)
		if err == nil {
			return c
		}
		lastErr = err
		// Another process may have taken the free port first.
		if !strings.Contains(err.Error(), "port is already allocated") && !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	t.Fatalf("start %s (%s): %v", s.Name, s.Image, lastErr)
	return nil
}

func createContainer(t testing.TB, s spec) (*container, error) {
	t.Helper()
	reach, bind := hostIP()
	hostPort, err := freePort()
	if err != nil {
		return nil, err
	}
	port, err := mobynet.ParsePort(s.Port)
	if err != nil {
		return nil, fmt.Errorf("spec.Port: %w", err)
	}
	bindAddr, err := netip.ParseAddr(bind)
	if err != nil {
		return nil, err
	}
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithLogger(tclog.TestLogger(t)),
		testcontainers.WithName(fmt.Sprintf("concord-it-%s-%d-%s", s.Name, os.Getpid(), hostPort)),
		testcontainers.WithExposedPorts(s.Port),
		testcontainers.WithHostConfigModifier(func(hc *dcontainer.HostConfig) {
			hc.PortBindings = mobynet.PortMap{port: []mobynet.PortBinding{{HostIP: bindAddr, HostPort: hostPort}}}
		}),
	}
	if s.Entrypoint != nil {
		opts = append(opts, testcontainers.WithEntrypoint(s.Entrypoint...))
	}
	if s.Cmd != nil {
		opts = append(opts, testcontainers.WithCmd(s.Cmd...))
	}
	if len(s.Env) > 0 {
		opts = append(opts, testcontainers.WithEnv(s.Env))
	}
	for path, body := range s.Files {
		opts = append(opts, testcontainers.WithFiles(testcontainers.ContainerFile{
			Reader: bytes.NewReader(body), ContainerFilePath: path, FileMode: 0o644,
		}))
	}
	if s.Network != "" {
		opts = append(opts, tcnet.WithNetworkName(s.Aliases, s.Network))
	}

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	tc, err := testcontainers.Run(ctx, s.Image, opts...)
	if tc != nil {
		// Registered before the error check: a container created but not
		// started is removed too.
		t.Cleanup(func() { terminate(t, s.Name, tc) })
	}
	if err != nil {
		return nil, err
	}
	c := &container{spec: s, c: tc, endpoint: net.JoinHostPort(reach, hostPort)}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.Logs())
		}
	})
	if err := c.waitReady(ctx); err != nil {
		t.Fatalf("%s not ready: %v\n%s", s.Name, err, c.Logs())
	}
	return c, nil
}

func terminate(t testing.TB, name string, c *testcontainers.DockerContainer) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// No graceful stop: the test is over, and the data goes with it.
	if err := c.Terminate(ctx, testcontainers.StopTimeout(0)); err != nil {
		t.Errorf("terminate %s: %v", name, err)
	}
}

// newNetwork creates a user-defined bridge network for t, removed by its
// cleanup (after the containers on it, which are registered later), and
// returns its name for spec.Network.
func newNetwork(t *testing.T) string {
	t.Helper()
	requireDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := tcnet.New(ctx)
	if n != nil {
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := n.Remove(ctx); err != nil {
				t.Errorf("remove network %s: %v", n.Name, err)
			}
		})
	}
	if err != nil {
		t.Fatalf("create a Docker network: %v", err)
	}
	return n.Name
}

// withDocker calls f with a Docker client, closed after.
func withDocker(ctx context.Context, f func(client.APIClient) error) error {
	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	return f(cli)
}

var dockerCheck struct {
	once sync.Once
	err  error
}

// requireDocker skips t (a test or a benchmark) if no Docker daemon
// answers, or fails it if CONCORD_REQUIRE_DOCKER=1.
func requireDocker(t testing.TB) {
	t.Helper()
	dockerCheck.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		dockerCheck.err = withDocker(ctx, func(cli client.APIClient) error {
			_, err := cli.Ping(ctx, client.PingOptions{})
			return err
		})
	})
	if dockerCheck.err == nil {
		return
	}
	msg := fmt.Sprintf("no Docker daemon reachable (%v): these tests run store servers in containers; start Docker, or set DOCKER_HOST", dockerCheck.err)
	if os.Getenv("CONCORD_REQUIRE_DOCKER") == "1" {
		t.Fatal(msg + " (CONCORD_REQUIRE_DOCKER=1, so this fails instead of skipping)")
	}
	t.Skip(msg)
}

var imageChecks sync.Map // image name -> error (nil: present)

// requireImage fails t, saying how to get it, if image is neither
// present nor pullable.
func requireImage(t testing.TB, image string) {
	t.Helper()
	v, ok := imageChecks.Load(image)
	if !ok {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		err := withDocker(ctx, func(cli client.APIClient) error {
			if _, err := cli.ImageInspect(ctx, image); err == nil {
				return nil
			}
			rc, err := cli.ImagePull(ctx, image, client.ImagePullOptions{})
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(io.Discard, rc)
			if err != nil {
				return err
			}
			_, err = cli.ImageInspect(ctx, image)
			return err
		})
		v, _ = imageChecks.LoadOrStore(image, err)
	}
	if err, _ := v.(error); err != nil {
		t.Fatalf("image %s is not available: %v\nBuild the test images with `make images`, or name another image in CONCORD_ETCD_IMAGE, CONCORD_CONSUL_IMAGE or CONCORD_ZOOKEEPER_IMAGE.", image, err)
	}
}

// startEtcd starts a single-member etcd with short raft timings (see
// etcdHeartbeat) and its data in the container's /data, which survives
// Stop and Start.
func startEtcd(t testing.TB) *container {
	t.Helper()
	return startContainer(t, spec{
		Image: etcdImage, Name: "etcd",
		Entrypoint: []string{"/usr/local/bin/etcd"},
		Cmd: append([]string{
			"--name=etcd0", "--data-dir=/data",
			"--listen-client-urls=http://0.0.0.0:2379", "--advertise-client-urls=http://127.0.0.1:2379",
			"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
			"--initial-cluster=etcd0=http://127.0.0.1:2380",
		}, etcdTimingFlags(etcdHeartbeat, etcdElectionTimeout)...),
		Port:  "2379/tcp",
		Ready: etcdReady,
	})
}

// etcdTimingFlags sets etcd's raft timing, and what every test server
// shares: quiet logs, and no fsync (the data outlives the process in the
// page cache, which is all that stopping and starting a container needs).
func etcdTimingFlags(heartbeat, election time.Duration) []string {
	return []string{
		"--heartbeat-interval=" + strconv.FormatInt(heartbeat.Milliseconds(), 10),
		"--election-timeout=" + strconv.FormatInt(election.Milliseconds(), 10),
		"--log-level=warn", "--unsafe-no-fsync",
	}
}

// etcdReady asks etcd's /health, which is true once the member has a
// leader and serves requests.
func etcdReady(ctx context.Context, endpoint string) error {
	return httpCheck(ctx, "http://"+endpoint+"/health", func(body string) error {
		if !strings.Contains(body, `"health":"true"`) {
			return fmt.Errorf("unhealthy: %s", body)
		}
		return nil
	})
}

// startConsul starts a Consul dev agent (one server, in memory), with
// extraArgs appended to its agent flags.
func startConsul(t testing.TB, extraArgs ...string) *container {
	t.Helper()
	return startContainer(t, spec{
		Image: consulImage, Name: "consul",
		Entrypoint: []string{"/bin/consul"},
		Cmd:        append([]string{"agent", "-dev", "-client=0.0.0.0"}, extraArgs...),
		Port:       "8500/tcp",
		Ready:      consulReady,
	})
}

// consulReady waits for the agent's cluster to have a leader.
func consulReady(ctx context.Context, endpoint string) error {
	return httpCheck(ctx, "http://"+endpoint+"/v1/status/leader", func(body string) error {
		if s := strings.TrimSpace(body); s == `""` || s == "" {
			return errors.New("no leader yet")
		}
		return nil
	})
}

// startZooKeeper starts a standalone ZooKeeper configured by the official
// image's environment variables (ZOO_TICK_TIME, ZOO_CFG_EXTRA, ...);
// the 4-letter word srvr, which the readiness check uses, is added to
// ZOO_4LW_COMMANDS_WHITELIST.
func startZooKeeper(t testing.TB, env map[string]string) *container {
	t.Helper()
	e := map[string]string{}
	for k, v := range env {
		e[k] = v
	}
	switch w := e["ZOO_4LW_COMMANDS_WHITELIST"]; {
	case w == "":
		e["ZOO_4LW_COMMANDS_WHITELIST"] = "ruok,srvr,mntr"
	case w != "*" && !strings.Contains(","+w+",", ",srvr,"):
		e["ZOO_4LW_COMMANDS_WHITELIST"] = w + ",srvr"
	}
	return startContainer(t, spec{
		Image: zookeeperImage, Name: "zookeeper",
		Env:   e,
		Port:  "2181/tcp",
		Ready: zookeeperReady,
	})
}

// zookeeperReady sends srvr, which ZooKeeper answers with its Mode
// (standalone, leader, follower) only while it serves clients: until
// then it says it is not serving, and closes clients' connections. (ruok
// answers imok as soon as the process listens, before that; a closed
// connection with no answer is Docker's port proxy with nothing behind
// it.) A serving ZooKeeper answers at once: a probe still unanswered
// after zkProbeTimeout is dropped for a new one, so that one stuck
// connection does not hold readiness back for the whole 5s that
// retryUntil allows a probe (once, after a restart under load,
// readiness came 5s after the server served).
func zookeeperReady(ctx context.Context, endpoint string) error {
	ctx, cancel := context.WithTimeout(ctx, zkProbeTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", endpoint)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write([]byte("srvr")); err != nil {
		return err
	}
	b, err := io.ReadAll(conn)
	if err != nil && len(b) == 0 {
		return err
	}
	if !strings.Contains(string(b), "\nMode: ") {
		return fmt.Errorf("srvr answered %q", strings.TrimSpace(string(b)))
	}
	return nil
}

// zkProbeTimeout bounds one srvr probe of zookeeperReady.
const zkProbeTimeout = time.Second

// httpCheck GETs url and checks the 200 response's body.
func httpCheck(ctx context.Context, url string, check func(body string) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	// A fresh transport each time, closed after: no idle connection
	// outlives the check (the goroutine leak check would see it).
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, body)
	}
	return check(string(body))
}
