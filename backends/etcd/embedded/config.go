package embedded

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Defaults of Config, applied where a field is zero.
const (
	DefaultName              = "concord"
	DefaultClusterToken      = "concord"
	DefaultHeartbeatInterval = 100 * time.Millisecond
	DefaultElectionTimeout   = time.Second
	DefaultMaxTxnOps         = 1024
	DefaultStartTimeout      = 60 * time.Second
	DefaultCompaction        = time.Hour
)

// Cluster states of Config.ClusterState.
const (
	ClusterStateNew      = "new"
	ClusterStateExisting = "existing"
)

// maxElectionTimeout is etcd's own upper bound (--election-timeout).
const maxElectionTimeout = 50 * time.Second

// Config describes one etcd member run inside the process. Only DataDir
// is required; every other zero field takes the default named on it.
type Config struct {
	// Name is the member name; "" means "concord". Every member of a
	// cluster needs its own.
	Name string
	// DataDir holds the member's WAL and database. Required. A member
	// restarted on the same DataDir keeps its data and identity, and then
	// ignores InitialCluster and ClusterState.
	DataDir string
	// ClientURL is the URL to listen on and advertise for clients, such as
	// "http://127.0.0.1:2379", or "https://..." when ClientTLS is set.
	// "" picks a free loopback port, with the scheme ClientTLS calls for.
	ClientURL string
	// PeerURL is the URL for raft peers: http, or https when PeerTLS is
	// set. "" takes this member's entry of InitialCluster, or else picks a
	// free loopback port with the scheme PeerTLS calls for. A member of a
	// cluster must keep its PeerURL across restarts: the others know it
	// by that URL.
	PeerURL string
	// ClientTLS, if set, serves clients over TLS only: ClientURL must be
	// https. nil serves them in plaintext, on an http ClientURL.
	ClientTLS *TLS
	// PeerTLS, if set, secures the traffic between members: PeerURL and
	// every URL of InitialCluster must be https, and every member of the
	// cluster needs it too. nil means plaintext, on http URLs.
	PeerTLS *TLS
	// InitialCluster lists the members of a new cluster as
	// "name1=peerURL1,name2=peerURL2,..."; it must name this member. ""
	// means a one-member cluster of this member.
	InitialCluster string
	// ClusterState is "new" (the default) to form a cluster with
	// InitialCluster, or "existing" to join one that already runs (the
	// member must have been added to it first).
	ClusterState string
	// ClusterToken keeps members of different clusters apart; "" means
	// "concord".
	ClusterToken string
	// HeartbeatInterval is raft's heartbeat, in whole milliseconds; 0
	// means 100ms.
	HeartbeatInterval time.Duration
	// ElectionTimeout is raft's election timeout, at least 5 heartbeats
	// and at most 50s; 0 means 1s. etcd grants no lease shorter than 1.5
	// election timeouts (rounded up to whole seconds).
	ElectionTimeout time.Duration
	// MaxTxnOps is the most operations etcd accepts in one transaction; 0
	// means 1024 (etcd's own default is 128; concord batches many
	// services).
	MaxTxnOps int
	// QuotaBackendBytes caps the database size; 0 means etcd's default.
	QuotaBackendBytes int64
	// CompactionRetention is how much history etcd keeps: older revisions
	// are compacted periodically. 0 means 1h; a negative value never
	// compacts.
	CompactionRetention time.Duration
	// StartTimeout bounds how long Start waits for the member to be ready
	// (for a cluster: to have a leader); 0 means 60s.
	StartTimeout time.Duration
	// UnsafeNoFsync skips fsync of the WAL and database. It makes writes
	// much faster and loses them on a power failure or a crash of the
	// machine: for tests only.
	UnsafeNoFsync bool
	// Logger receives etcd's own warnings and errors; nil discards them.
	Logger *slog.Logger
}

// TLS is the certificate setup of one of a member's listeners: the one
// for clients (Config.ClientTLS) or the one for peers (Config.PeerTLS).
// The files are PEM; Start reads them before it starts the member. etcd
// reads the certificate and key again on every handshake, so they can be
// renewed in place; the CA bundle only when the member starts.
type TLS struct {
	// CertFile and KeyFile are the member's certificate and its private
	// key; both are required. The certificate must name the host of the
	// URL it serves (an IP SAN of 127.0.0.1 for the loopback defaults).
	// For peers the member also presents it when it dials the others, so
	// with ClientCertAuth it needs the client-auth extended key usage as
	// well as server-auth.
	CertFile, KeyFile string
	// TrustedCAFile is the CA bundle that verifies the certificates that
	// clients (or peers) present, and, for peers, the other members'
	// server certificates. Required with ClientCertAuth; "" otherwise
	// means the system's roots.
	TrustedCAFile string
	// ClientCertAuth refuses every connection whose client (or peer) does
	// not present a certificate that TrustedCAFile verifies. With etcd
	// auth enabled, a client that presents one and no token is the user
	// named by its certificate's common name.
	ClientCertAuth bool
}

// Validate checks cfg without touching the network or the disk. Each
// error names the field and says how to fix it.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("embedded etcd: "+format, args...))
	}
	if c.DataDir == "" {
		bad("DataDir is empty: set it to a directory the process may write (etcd keeps its WAL and database there)")
	}
	if strings.ContainsAny(c.Name, "=,") {
		bad("Name %q contains '=' or ',': choose a name without them (InitialCluster uses both as separators)", c.Name)
	}
	clientScheme, peerScheme := schemeFor(c.ClientTLS), schemeFor(c.PeerTLS)
	if c.ClientURL != "" {
		if err := checkURL(c.ClientURL, clientScheme, "ClientTLS"); err != nil {
			bad("ClientURL %q: %v: use a URL like \"%s://127.0.0.1:2379\", or \"\" to pick a free port", c.ClientURL, err, clientScheme)
		}
	}
	if c.PeerURL != "" {
		if err := checkURL(c.PeerURL, peerScheme, "PeerTLS"); err != nil {
			bad("PeerURL %q: %v: use a URL like \"%s://127.0.0.1:2380\", or \"\" to pick a free port", c.PeerURL, err, peerScheme)
		}
	}
	for _, e := range c.ClientTLS.check("ClientTLS") {
		bad("%s", e)
	}
	for _, e := range c.PeerTLS.check("PeerTLS") {
		bad("%s", e)
	}
	if c.ClientURL != "" && c.PeerURL != "" && hostOf(c.ClientURL) == hostOf(c.PeerURL) {
		bad("ClientURL %q and PeerURL %q are on the same host and port: give each its own port", c.ClientURL, c.PeerURL)
	}
	switch c.ClusterState {
	case "", ClusterStateNew:
	case ClusterStateExisting:
		if c.InitialCluster == "" {
			bad(`ClusterState is "existing" but InitialCluster is empty: list the members of the cluster to join, this one included`)
		}
	default:
		bad(`ClusterState %q: want "new" or "existing"`, c.ClusterState)
	}
	if c.InitialCluster != "" {
		members, err := parseCluster(c.InitialCluster, peerScheme)
		if err != nil {
			bad("InitialCluster %q: %v: write it as \"name1=%s://host1:port1,name2=%s://host2:port2\"", c.InitialCluster, err, peerScheme, peerScheme)
		} else {
			name := c.name()
			peer, ok := members[name]
			switch {
			case !ok:
				bad("InitialCluster %q does not name this member %q: add %s=<its PeerURL>, or set Name to one of its names", c.InitialCluster, name, name)
			case c.PeerURL != "" && c.PeerURL != peer:
				bad("PeerURL %q differs from %q, this member's entry in InitialCluster: make them equal, or leave PeerURL empty", c.PeerURL, peer)
			}
		}
	}
	hb, et := c.heartbeat(), c.election()
	if c.HeartbeatInterval < 0 || (c.HeartbeatInterval > 0 && c.HeartbeatInterval < time.Millisecond) {
		bad("HeartbeatInterval %v: want at least 1ms, or 0 for %v", c.HeartbeatInterval, DefaultHeartbeatInterval)
	}
	switch {
	case c.ElectionTimeout < 0:
		bad("ElectionTimeout %v is negative: want 0 for %v, or a positive duration", c.ElectionTimeout, DefaultElectionTimeout)
	case hb >= time.Millisecond && et < 5*hb:
		bad("ElectionTimeout %v is less than 5 times HeartbeatInterval %v: raise it to at least %v", et, hb, 5*hb)
	case et > maxElectionTimeout:
		bad("ElectionTimeout %v is more than etcd's limit of %v: lower it", et, maxElectionTimeout)
	}
	if c.MaxTxnOps < 0 {
		bad("MaxTxnOps %d is negative: want 0 for %d, or a positive count", c.MaxTxnOps, DefaultMaxTxnOps)
	}
	if c.QuotaBackendBytes < 0 {
		bad("QuotaBackendBytes %d is negative: want 0 for etcd's default, or a positive size", c.QuotaBackendBytes)
	}
	if c.StartTimeout < 0 {
		bad("StartTimeout %v is negative: want 0 for %v, or a positive duration", c.StartTimeout, DefaultStartTimeout)
	}
	return errors.Join(errs...)
}

func (c Config) name() string {
	if c.Name == "" {
		return DefaultName
	}
	return c.Name
}

func (c Config) heartbeat() time.Duration {
	if c.HeartbeatInterval == 0 {
		return DefaultHeartbeatInterval
	}
	return c.HeartbeatInterval.Truncate(time.Millisecond)
}

func (c Config) election() time.Duration {
	if c.ElectionTimeout == 0 {
		return DefaultElectionTimeout
	}
	return c.ElectionTimeout.Truncate(time.Millisecond)
}

// resolved returns c with every default applied and every port chosen.
// It expects c to be valid.
func (c Config) resolved() (Config, error) {
	c.Name = c.name()
	c.HeartbeatInterval = c.heartbeat()
	c.ElectionTimeout = c.election()
	if c.ClusterState == "" {
		c.ClusterState = ClusterStateNew
	}
	if c.ClusterToken == "" {
		c.ClusterToken = DefaultClusterToken
	}
	if c.MaxTxnOps == 0 {
		c.MaxTxnOps = DefaultMaxTxnOps
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.CompactionRetention == 0 {
		c.CompactionRetention = DefaultCompaction
	}
	if c.PeerURL == "" && c.InitialCluster != "" {
		members, _ := parseCluster(c.InitialCluster, schemeFor(c.PeerTLS))
		c.PeerURL = members[c.Name]
	}
	var err error
	if c.ClientURL == "" {
		if c.ClientURL, err = freeLoopback(schemeFor(c.ClientTLS)); err != nil {
			return c, err
		}
	}
	if c.PeerURL == "" {
		if c.PeerURL, err = freeLoopback(schemeFor(c.PeerTLS)); err != nil {
			return c, err
		}
	}
	if c.InitialCluster == "" {
		c.InitialCluster = c.Name + "=" + c.PeerURL
	}
	return c, nil
}

// schemeFor is the URL scheme of a listener with the TLS setup t.
func schemeFor(t *TLS) string {
	if t != nil {
		return "https"
	}
	return "http"
}

// checkURL accepts scheme://host:port, where scheme is what the
// listener's TLS setup, the field named tlsField, calls for.
func checkURL(raw, scheme, tlsField string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	switch {
	case u.Scheme == scheme:
	case u.Scheme == "https":
		return fmt.Errorf("scheme https needs %s, which is nil: set it, or", tlsField)
	case u.Scheme == "http":
		return fmt.Errorf("scheme http with %s set: a TLS listener needs https", tlsField)
	default:
		return fmt.Errorf("scheme %q is not supported (only %s here)", u.Scheme, scheme)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
		return errors.New("it must be only a scheme, a host and a port")
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("the host is empty")
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return nil
}

// hostOf is the host:port of a URL, or the URL itself if it does not
// parse.
func hostOf(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Host != "" {
		return u.Host
	}
	return raw
}

// parseCluster reads "name=url,..." into a map from name to peer URL;
// every URL must have scheme.
func parseCluster(s, scheme string) (map[string]string, error) {
	members := make(map[string]string)
	for _, entry := range strings.Split(s, ",") {
		name, peer, ok := strings.Cut(strings.TrimSpace(entry), "=")
		if !ok || name == "" || peer == "" {
			return nil, fmt.Errorf("entry %q is not name=peerURL", entry)
		}
		if _, dup := members[name]; dup {
			return nil, fmt.Errorf("member %q is listed twice", name)
		}
		if err := checkURL(peer, scheme, "PeerTLS"); err != nil {
			return nil, fmt.Errorf("peer URL %q of %q: %w", peer, name, err)
		}
		members[name] = peer
	}
	return members, nil
}

// FreeLoopbackURL returns "http://127.0.0.1:<port>" for a port that was
// free when it looked. Another process may take it before it is used.
func FreeLoopbackURL() (string, error) { return freeLoopback("http") }

// FreeLoopbackHTTPSURL is FreeLoopbackURL with the scheme https: a
// ClientURL or PeerURL for a listener with TLS.
func FreeLoopbackHTTPSURL() (string, error) { return freeLoopback("https") }

func freeLoopback(scheme string) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("embedded etcd: pick a free loopback port: %w", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		return "", fmt.Errorf("embedded etcd: pick a free loopback port: %w", err)
	}
	return scheme + "://" + addr, nil
}

// check returns what is wrong with t, without reading its files; field
// names it in the messages. A nil t is fine.
func (t *TLS) check(field string) []string {
	if t == nil {
		return nil
	}
	var errs []string
	if t.CertFile == "" {
		errs = append(errs, field+".CertFile is empty: set it to the PEM certificate the member presents")
	}
	if t.KeyFile == "" {
		errs = append(errs, field+".KeyFile is empty: set it to the PEM private key of "+field+".CertFile")
	}
	if t.ClientCertAuth && t.TrustedCAFile == "" {
		errs = append(errs, field+".ClientCertAuth is set but "+field+".TrustedCAFile is empty: set it to the CA bundle that verifies the certificates presented to the member")
	}
	return errs
}

// load reads t's files as etcd will, so that a missing or unreadable
// file fails Start with an error naming the field, not deep inside etcd.
func (t *TLS) load(field string) error {
	if t == nil {
		return nil
	}
	if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil {
		return fmt.Errorf("embedded etcd: %s.CertFile %q and %s.KeyFile %q: %w: give a PEM certificate and its private key",
			field, t.CertFile, field, t.KeyFile, err)
	}
	if t.TrustedCAFile != "" {
		pem, err := os.ReadFile(t.TrustedCAFile)
		if err != nil {
			return fmt.Errorf("embedded etcd: %s.TrustedCAFile: %w", field, err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return fmt.Errorf("embedded etcd: %s.TrustedCAFile %q holds no PEM certificate", field, t.TrustedCAFile)
		}
	}
	return nil
}
