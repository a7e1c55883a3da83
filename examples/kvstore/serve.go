package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Files of the data directory besides state.json.
const (
	// adminTokenFile holds the admin API's bearer token (mode 0600).
	adminTokenFile = "admin.token"
	// lockFile is flocked by the daemon so two never share a directory.
	lockFile = "lock"
)

// serveOptions configure the daemon.
type serveOptions struct {
	Listen      string
	Dir         string
	Service     string
	Node        string
	Primary     string
	Sync        bool
	SyncTimeout time.Duration
	// Lease is the primary lease (see serverConfig.Lease); 0 is off.
	Lease    time.Duration
	API      string
	APIToken string
}

// serveMain runs `kvstore serve` and returns the exit code.
func serveMain(args []string) int {
	fs := flag.NewFlagSet("kvstore serve", flag.ContinueOnError)
	var o serveOptions
	fs.StringVar(&o.Listen, "listen", "", "address to serve HTTP on, host:port (required)")
	fs.StringVar(&o.Dir, "dir", "", "data directory, created if missing (required)")
	fs.StringVar(&o.Service, "service", os.Getenv("CONCORD_SERVICE"), "concord service name, for sync mode (default $CONCORD_SERVICE)")
	fs.StringVar(&o.Node, "node", os.Getenv("CONCORD_NODE"), "this node's name, reported as the primary once promoted (default $CONCORD_NODE)")
	syncDefault, err := envBool("CONCORD_PARAM_SYNC")
	if err != nil {
		fmt.Fprintln(os.Stderr, "kvstore serve:", err)
		return exitConfigured
	}
	fs.BoolVar(&o.Sync, "sync", syncDefault, "answer a write only once a concord checkpoint holding it is acknowledged (default $CONCORD_PARAM_SYNC)")
	fs.DurationVar(&o.SyncTimeout, "sync-timeout", 10*time.Second, "bound of one call to concord's checkpoint API")
	leaseDefault, err := envDuration("CONCORD_PARAM_LEASE")
	if err != nil {
		fmt.Fprintln(os.Stderr, "kvstore serve:", err)
		return exitConfigured
	}
	fs.DurationVar(&o.Lease, "lease", leaseDefault, "as the primary, refuse writes once this long has passed since concord's last renewal (POST /admin/renew) or promotion; 0 is off (default $CONCORD_PARAM_LEASE)")
	if err := fs.Parse(args); err != nil {
		return exitArgs
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "kvstore serve: unexpected arguments %q\n", fs.Args())
		return exitArgs
	}
	o.Primary = os.Getenv("CONCORD_PRIMARY")
	o.API, o.APIToken = os.Getenv("CONCORD_API"), os.Getenv("CONCORD_API_TOKEN")

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, o, log); err != nil {
		log.Error("kvstore serve failed", "err", err)
		return exitGeneric
	}
	return exitOK
}

// validate checks the options and names the flag or variable to fix.
func (o *serveOptions) validate() error {
	if o.Listen == "" {
		return errors.New("--listen is required (host:port)")
	}
	if _, _, err := net.SplitHostPort(o.Listen); err != nil {
		return fmt.Errorf("--listen %q: %w (want host:port)", o.Listen, err)
	}
	if o.Dir == "" {
		return errors.New("--dir is required (the data directory)")
	}
	if err := checkLease(o.Lease); err != nil {
		return fmt.Errorf("--lease %v: %w", o.Lease, err)
	}
	if o.Sync {
		if o.API == "" {
			return errors.New("sync mode needs CONCORD_API, the base URL of the local concord node's API")
		}
		if o.Service == "" {
			return errors.New("sync mode needs the service name: --service or CONCORD_SERVICE")
		}
		if o.SyncTimeout <= 0 {
			return fmt.Errorf("--sync-timeout %v must be positive", o.SyncTimeout)
		}
	}
	return nil
}

// serve runs the daemon until ctx ends, then stops it gracefully.
func serve(ctx context.Context, o serveOptions, log *slog.Logger) error {
	if err := o.validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return fmt.Errorf("--dir: %w", err)
	}
	unlock, err := lockDir(o.Dir)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := loadState(o.Dir)
	if err != nil {
		return err
	}
	token, err := adminToken(o.Dir)
	if err != nil {
		return err
	}
	cfg := serverConfig{Dir: o.Dir, Node: o.Node, Primary: o.Primary, AdminToken: token, Lease: o.Lease, Logger: log}
	if o.Sync {
		cfg.Replicator = newReplicator(o.API, o.APIToken, o.Service, o.SyncTimeout)
		defer cfg.Replicator.close()
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	srv := &http.Server{
		Handler:           newServer(cfg, st).handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("serving", "addr", ln.Addr().String(), "dir", o.Dir, "version", st.Version, "token", st.Token, "sync", o.Sync, "lease", o.Lease, "pid", os.Getpid())

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("stopping")
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		log.Warn("graceful shutdown timed out; closing connections", "err", err)
		srv.Close()
	}
	<-errc
	log.Info("stopped")
	return nil
}

// lockDir flocks dir's lock file, so a second daemon on the same
// directory fails instead of interleaving writes with the first.
func lockDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w: another kvstore serve uses this directory; stop it first", path, err)
	}
	return func() { f.Close() }, nil
}

// adminToken reads the admin token the agent wrote, or, for a daemon
// started by hand, creates one.
func adminToken(dir string) (string, error) {
	path := filepath.Join(dir, adminTokenFile)
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		tok, err := newToken()
		if err != nil {
			return "", err
		}
		return tok, writeFileAtomic(path, 0o600, func(w io.Writer) error {
			_, err := io.WriteString(w, tok+"\n")
			return err
		})
	}
	if err != nil {
		return "", err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s: mode %v lets others read the admin token: chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s is empty: remove it and start again to get a new token", path)
	}
	return tok, nil
}

// newToken returns 32 random bytes in hex.
func newToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// envBool reads a boolean environment variable; unset or empty is false.
func envBool(name string) (bool, error) {
	v := os.Getenv(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s=%q: want true or false", name, v)
	}
	return b, nil
}

// envDuration reads a duration environment variable; unset or empty is 0.
func envDuration(name string) (time.Duration, error) {
	v := os.Getenv(name)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: want a duration such as 5s, or 0 for off", name, v)
	}
	return d, nil
}

// checkLease checks a lease setting: 0 (off) or at least a millisecond,
// the unit /healthz reports it in.
func checkLease(d time.Duration) error {
	if d < 0 {
		return errors.New("must not be negative: give a duration such as 5s, or 0 for off")
	}
	if d > 0 && d < time.Millisecond {
		return errors.New("is below 1ms: give a duration such as 5s, or 0 for off")
	}
	return nil
}
