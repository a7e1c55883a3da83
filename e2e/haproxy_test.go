package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/concordha/concord/internal/syncbuf"
)

// haproxy is an HAProxy process in front of the kvstore nodes, routing to
// the one whose node API passes the primary check.
type haproxy struct {
	port int
	logs *syncbuf.Buffer
}

// startHAProxy runs HAProxy (installed from Debian's packages by
// images/install-haproxy) with `option httpchk` against each node's
// /v1/services/kv/primary, listening on a free port of its own. It
// returns nil if haproxy is not installed, unless CONCORD_REQUIRE_HAPROXY=1
// (CI), which makes that a failure.
func startHAProxy(t *testing.T, work string, nodes []*kvNode) *haproxy {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/haproxy"); serr == nil {
			bin, err = "/usr/sbin/haproxy", nil
		}
	}
	if err != nil {
		if os.Getenv("CONCORD_REQUIRE_HAPROXY") == "1" {
			t.Fatalf("haproxy is not installed (images/install-haproxy installs it) and CONCORD_REQUIRE_HAPROXY=1")
		}
		t.Log("haproxy is not installed: skipping the load balancer part (images/install-haproxy installs it)")
		return nil
	}
	port := freePorts(t, 1)[0]
	var servers strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&servers, "  server %s 127.0.0.1:%d check port %d\n", n.id, n.kv, n.api)
	}
	cfg := fmt.Sprintf(`global
  maxconn 256
defaults
  mode http
  timeout connect 1s
  timeout client 10s
  timeout server 10s
frontend kv
  bind 127.0.0.1:%d
  default_backend kv
backend kv
  option httpchk GET /v1/services/kv/primary
  http-check expect status 200
  default-server inter 200ms fall 1 rise 1
%s`, port, servers.String())
	path := filepath.Join(work, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	h := &haproxy{port: port, logs: &syncbuf.Buffer{}}
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = h.logs, h.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start haproxy: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("--- haproxy's log ---\n%s", h.logs.String())
		}
	})
	return h
}

// put writes through HAProxy.
func (h *haproxy) put(k, v string) error {
	return putURL(noReuse, fmt.Sprintf("http://127.0.0.1:%d/kv/%s", h.port, k), k, v)
}
