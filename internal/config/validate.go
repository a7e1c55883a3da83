package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/concordha/concord/core"
)

// Validate checks the configuration and returns every problem at once
// (errors.Join). Each names where the value came from (the file and line,
// or the CONCORD_* variable), the key path and the fix.
//
// Validate does not change f. It reads store.keepalive_interval 0 as
// session_ttl/3, empty store.embedded keys and node.data_dir, and nil
// fields of services, as their defaults, as Load fills them; every other
// key must hold its final value, so a File built in code should start
// from Defaults(). It reads the files the configuration names (TLS,
// secrets) and checks that agent commands are executable files.
func (f *File) Validate() error {
	c := &checker{f: f}
	c.node()
	c.nodeAPI()
	c.dataDir()
	c.cluster()
	c.secret()
	c.store()
	c.services()
	c.proxies()
	c.log()
	if len(c.errs) == 0 {
		// The checks above cover core's with better messages; this guards
		// against the two drifting apart.
		if err := f.CoreConfig().Validate(); err != nil {
			c.errs = append(c.errs, f.errorf("", "%v", err))
		}
	}
	return errors.Join(sortByLine(c.errs)...)
}

type checker struct {
	f    *File
	errs []error
}

func (c *checker) add(field, format string, args ...any) {
	c.errs = append(c.errs, c.f.errorf(field, format, args...))
}

// name checks a node ID or service name with core's rules.
func (c *checker) name(field, value, example string) {
	if value == "" {
		c.add(field, "missing; give a name such as %s (letters, digits, '.', '_', '-')", example)
		return
	}
	if err := core.ValidateName(field, value); err != nil {
		c.add(field, "%s", strings.TrimPrefix(err.Error(), field+" "))
	}
}

// oneOf checks an enumerated value.
func (c *checker) oneOf(field, value string, valid []string) bool {
	if slices.Contains(valid, value) {
		return true
	}
	msg := fmt.Sprintf("%q is not valid; use one of %s", value, strings.Join(valid, ", "))
	if s := closest(strings.ToLower(value), valid); s != "" {
		msg += " (did you mean " + s + "?)"
	}
	c.add(field, "%s", msg)
	return false
}

func (c *checker) node() {
	n := c.f.Node
	c.name("node.id", n.ID, "node-a")
	// With an API, node.address is where peers dial it: nodeAPI checks it.
	if n.API.Listen == "" && strings.ContainsFunc(n.Address, unicode.IsSpace) {
		c.add("node.address", "%q contains white space; write host:port, e.g. 10.0.0.1:7000", n.Address)
	}
}

func (c *checker) cluster() {
	p := c.f.Cluster.Prefix
	switch {
	case p == "":
		c.add("cluster.prefix", "is empty; write a key root ending in \"/\", e.g. concord/ (every node of the cluster uses the same)")
	case !strings.HasSuffix(p, "/"):
		c.add("cluster.prefix", "%q does not end with \"/\"; write %q so that it cannot match a sibling folder", p, p+"/")
	case c.f.Store.Type == StoreConsul && strings.HasPrefix(p, "/"):
		c.add("cluster.prefix", "%q starts with \"/\", which Consul keys cannot; write %q", p, strings.TrimLeft(p, "/"))
	}
}

func (c *checker) store() {
	s := c.f.Store
	if !c.oneOf("store.type", s.Type, StoreTypes) {
		return // the other checks depend on the type the operator meant
	}
	c.storeKeysUsed(s.Type)
	switch s.Type {
	case StoreEtcd, StoreConsul, StoreZooKeeper:
		c.endpoints(s.Type, s.Endpoints)
		c.tls(s.TLS)
		if s.Type == StoreEtcd {
			c.etcdSchemes(s.Endpoints, s.TLS)
		}
	case StoreEmbedded:
		c.embedded(s.Embedded.withDefaults(c.f.Node.ID))
	}
	c.auth(s.Type, s.Auth)
	c.timings()
}

// storeKeysUsed reports keys set for a store type that does not use
// them: operators who change store.type, or mistype it, leave them behind.
func (c *checker) storeKeysUsed(typ string) {
	v := reflect.ValueOf(c.f).Elem()
	for _, l := range leaves {
		if l.stores == nil || slices.Contains(l.stores, typ) || v.FieldByIndex(l.index).IsZero() {
			continue
		}
		users := "the " + l.stores[0] + " store uses"
		if n := len(l.stores); n > 1 {
			users = "the " + strings.Join(l.stores[:n-1], ", ") + " and " + l.stores[n-1] + " stores use"
		}
		c.add(l.path, "is set, but only %s it and store.type is %s; remove it, or fix store.type", users, typ)
	}
}

// consulMinTTL is the shortest session TTL Consul accepts unless its
// agents' session_ttl_min is lowered.
const consulMinTTL = 10 * time.Second

// defaultPorts are the usual client ports, for examples in messages.
var defaultPorts = map[string]string{StoreEtcd: "2379", StoreConsul: "8500", StoreZooKeeper: "2181"}

func (c *checker) endpoints(typ string, eps []string) {
	example := fmt.Sprintf("[10.0.0.1:%[1]s, 10.0.0.2:%[1]s, 10.0.0.3:%[1]s]", defaultPorts[typ])
	if len(eps) == 0 {
		c.add("store.endpoints", "missing; the %s store needs the addresses of its servers, e.g. endpoints: %s", typ, example)
		return
	}
	seen := map[string]bool{}
	for i, ep := range eps {
		field := fmt.Sprintf("store.endpoints[%d]", i)
		if seen[ep] {
			c.add(field, "%q is listed twice; list each server once", ep)
			continue
		}
		seen[ep] = true
		if msg := endpointProblem(typ, ep); msg != "" {
			c.add(field, "%q %s; write host:port as in %s", ep, msg, example)
		}
	}
}

// endpointProblem returns what is wrong with one endpoint, "" if nothing.
// etcd and consul take host:port or http(s)://host:port; zookeeper takes
// host or host:port.
func endpointProblem(typ, ep string) string {
	hostport := ep
	if strings.Contains(ep, "://") {
		if typ == StoreZooKeeper {
			return "has a URL scheme, which zookeeper endpoints do not take"
		}
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.Trim(u.Path, "/") != "" {
			return "is not an http:// or https:// URL with a host and port and nothing after"
		}
		hostport = u.Host
	}
	if typ == StoreZooKeeper && !strings.Contains(hostport, ":") {
		hostport += ":2181"
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || host == "" {
		return "is not host:port"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "has no valid port (1 to 65535)"
	}
	return ""
}

// etcdSchemes checks the endpoints' schemes against store.tls: etcd's
// client dials every endpoint the same way, in plaintext for http:// and
// with TLS for https://, so a mix, or store.tls with http://, would not do
// what the file says. host:port takes whatever store.tls says. https://
// without store.tls verifies the servers with the system's roots.
func (c *checker) etcdSchemes(eps []string, t TLS) {
	var plain, secure []string
	for i, ep := range eps {
		scheme, _, _ := strings.Cut(ep, "://")
		item := fmt.Sprintf("store.endpoints[%d] is %s", i, ep)
		switch scheme {
		case "http":
			plain = append(plain, item)
		case "https":
			secure = append(secure, item)
		}
	}
	switch {
	case len(plain) > 0 && len(secure) > 0:
		c.add("store.endpoints", "mixes http:// (%s) and https:// (%s), but etcd's client dials every endpoint with the same scheme; write them all https:// (TLS, set up by store.tls), or all http:// (plaintext)",
			strings.Join(plain, ", "), strings.Join(secure, ", "))
	case len(plain) > 0 && t.Enabled():
		c.add("store.tls", "is set, but %s: http:// is plaintext, so the TLS settings would not be used; write the endpoints as https:// (or host:port), or remove store.tls",
			strings.Join(plain, ", "))
	}
}

func (c *checker) tls(t TLS) {
	c.readable("store.tls.ca_file", t.CAFile)
	c.readable("store.tls.cert_file", t.CertFile)
	c.readable("store.tls.key_file", t.KeyFile)
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		c.add("store.tls.cert_file", "is set but store.tls.key_file is not; a client certificate needs its key: set both or neither")
	case t.KeyFile != "" && t.CertFile == "":
		c.add("store.tls.key_file", "is set but store.tls.cert_file is not; a client key needs its certificate: set both or neither")
	}
	if t.InsecureSkipVerify && t.CAFile != "" {
		c.add("store.tls.insecure_skip_verify", "is true, which ignores store.tls.ca_file; remove one of them")
	}
}

func (c *checker) auth(typ string, a Auth) {
	switch typ {
	case StoreEtcd:
		if a.Password != "" && a.PasswordFile != "" {
			c.add("store.auth.password", "is set and so is store.auth.password_file; give the password one way only")
		}
		if (a.Password != "" || a.PasswordFile != "") && a.Username == "" {
			c.add("store.auth.username", "missing; a password needs the etcd user it belongs to")
		}
		c.readable("store.auth.password_file", a.PasswordFile)
	case StoreConsul:
		if a.Token != "" && a.TokenFile != "" {
			c.add("store.auth.token", "is set and so is store.auth.token_file; give the token one way only")
		}
		c.readable("store.auth.token_file", a.TokenFile)
	case StoreZooKeeper:
		if user, pass, ok := strings.Cut(a.Digest, ":"); a.Digest != "" && (!ok || user == "" || pass == "") {
			c.add("store.auth.digest", "is not user:password; write it as user:password")
		}
	}
}

// readable checks that a file named in the config can be opened, when
// the key is set. It reports whether the key is set and the file can be
// opened.
func (c *checker) readable(field, path string) bool {
	if path == "" {
		return false
	}
	if why := unreadable(path); why != "" {
		c.add(field, "%q %s; give the path of a readable file (relative paths start at the working directory)", path, why)
		return false
	}
	return true
}

func unreadable(path string) string {
	fh, err := os.Open(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "does not exist"
	case errors.Is(err, fs.ErrPermission):
		return "is not readable by this user"
	case err != nil:
		return fmt.Sprintf("cannot be opened (%v)", errors.Unwrap(err))
	}
	defer fh.Close()
	if st, err := fh.Stat(); err == nil && st.IsDir() {
		return "is a directory"
	}
	return ""
}

// withDefaults returns e with empty keys set as Load sets them.
func (e Embedded) withDefaults(nodeID string) Embedded {
	setIfEmpty(&e.DataDir, DefaultDataDir)
	setIfEmpty(&e.Name, nodeID)
	setIfEmpty(&e.ClientURL, withScheme(DefaultClientURL, schemeFor(e.ClientTLS.Enabled())))
	setIfEmpty(&e.PeerURL, withScheme(DefaultPeerURL, schemeFor(e.PeerTLS.Enabled())))
	setIfEmpty(&e.ClusterState, DefaultClusterState)
	setIfEmpty(&e.ClusterToken, DefaultClusterToken)
	if e.InitialCluster == "" && e.Name != "" {
		e.InitialCluster = e.Name + "=" + e.PeerURL
	}
	return e
}

// schemeFor is the URL scheme of a listener of the embedded member.
func schemeFor(tls bool) string {
	if tls {
		return "https"
	}
	return "http"
}

// withScheme returns the URL u with the scheme scheme.
func withScheme(u, scheme string) string {
	_, rest, _ := strings.Cut(u, "://")
	return scheme + "://" + rest
}

func (c *checker) embedded(e Embedded) {
	if e.Name != c.f.Node.ID { // the default (node.id) is checked as node.id
		c.name("store.embedded.name", e.Name, "node-a")
	}
	clientOK := c.memberURL("store.embedded.client_url", e.ClientURL, DefaultClientURL, clientTLSKey, e.ClientTLS.Enabled())
	peerOK := c.memberURL("store.embedded.peer_url", e.PeerURL, DefaultPeerURL, peerTLSKey, e.PeerTLS.Enabled())
	c.embeddedTLS(e, clientOK)
	if clientOK && peerOK && e.ClientURL == e.PeerURL {
		c.add("store.embedded.peer_url", "is the same as store.embedded.client_url; give peers their own port, e.g. 2380 next to 2379")
	}
	if c.oneOf("store.embedded.cluster_state", e.ClusterState, []string{"new", "existing"}) &&
		e.ClusterState == "existing" && !strings.Contains(e.InitialCluster, ",") {
		c.add("store.embedded.cluster_state", "is existing, which joins a running cluster, but store.embedded.initial_cluster lists no other member; list the running members and this one")
	}
	if e.InitialCluster == "" {
		return // only without a name, which is reported as node.id
	}
	reported := "" // this member's entry, if its URL is reported as peer_url
	if !peerOK {
		reported = e.Name + "=" + e.PeerURL
	}
	members, ok := c.initialCluster(e.InitialCluster, e.PeerTLS.Enabled(), reported)
	if ok && e.Name != "" && peerOK {
		self := e.Name + "=" + e.PeerURL
		switch url, found := members[e.Name]; {
		case !found:
			c.add("store.embedded.initial_cluster", "does not list this member; add %s (store.embedded.name=store.embedded.peer_url)", self)
		case url != e.PeerURL:
			c.add("store.embedded.initial_cluster", "lists %s at %s, but store.embedded.peer_url is %s; make them the same", e.Name, url, e.PeerURL)
		}
	}
}

// The keys that set up TLS for the embedded member's listeners.
const (
	clientTLSKey = "store.embedded.client_tls"
	peerTLSKey   = "store.embedded.peer_tls"
)

// memberURL checks a URL the embedded server listens on and advertises:
// https if the listener's TLS key (tlsKey) is set, else http.
func (c *checker) memberURL(field, raw, example, tlsKey string, tls bool) bool {
	scheme := schemeFor(tls)
	if msg, fix := memberURLProblem(raw, scheme, tlsKey); msg != "" {
		if fix == "" {
			fix = "write e.g. " + withScheme(example, scheme)
		}
		c.add(field, "%q %s; %s", raw, msg, fix)
		return false
	}
	return true
}

// memberURLProblem returns what is wrong with the URL raw of a listener
// that must use scheme, whose TLS is set up by tlsKey, and a fix if the
// usual one (an example URL) does not fit; "" if nothing is wrong.
func memberURLProblem(raw, scheme, tlsKey string) (problem, fix string) {
	u, err := url.Parse(raw)
	switch {
	case err != nil || u.Host == "":
		return "is not a URL such as " + scheme + "://host:port", ""
	case u.Scheme == "https" && scheme == "http":
		return "uses https, but " + tlsKey + " is not set", "set " + tlsKey + " (cert_file and key_file at least) to serve TLS, or write http://"
	case u.Scheme == "http" && scheme == "https":
		return "uses http, but " + tlsKey + " is set, so the member serves only TLS there", "write https://, or remove " + tlsKey
	case u.Scheme != scheme:
		return "does not start with " + scheme + "://", ""
	case u.Port() == "" || u.Hostname() == "":
		return "has no host and port", ""
	case strings.Trim(u.Path, "/") != "" || u.RawQuery != "":
		return "has a path; give only scheme, host and port", ""
	}
	return "", ""
}

// initialCluster parses name=peer_url,... into a map from name to URL.
// With peer_tls every URL is https, else http. The URL of the entry
// reported (name=url) is not checked: it is reported as peer_url already.
func (c *checker) initialCluster(s string, peerTLS bool, reported string) (map[string]string, bool) {
	const field = "store.embedded.initial_cluster"
	scheme := schemeFor(peerTLS)
	how := fmt.Sprintf("write name=peer_url items separated by commas, e.g. node-a=%[1]s://10.0.0.1:2380,node-b=%[1]s://10.0.0.2:2380", scheme)
	members := map[string]string{}
	ok := true
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		name, u, found := strings.Cut(part, "=")
		switch {
		case !found || name == "" || u == "":
			c.add(field, "%q is not name=peer_url; %s", part, how)
			ok = false
		case members[name] != "":
			c.add(field, "lists %s twice; list each member once", name)
			ok = false
		case part == reported:
			members[name] = u
			ok = false
		default:
			if msg, fix := memberURLProblem(u, scheme, peerTLSKey); msg != "" {
				if fix != "" {
					fix += " (every member's peer URL uses the same scheme)"
				} else {
					fix = how
				}
				c.add(field, "member %s: %q %s; %s", name, u, msg, fix)
				ok = false
			}
			members[name] = u
		}
	}
	return members, ok
}

func (c *checker) timings() {
	s := c.f.Store
	def := Defaults().Store
	positive := []struct {
		field string
		v, ex time.Duration
	}{
		{"store.dial_timeout", s.DialTimeout, def.DialTimeout},
		{"store.session_ttl", s.SessionTTL, def.SessionTTL},
		{"store.op_timeout", s.OpTimeout, def.OpTimeout},
		{"store.retry_min", s.RetryMin, def.RetryMin},
		{"store.retry_max", s.RetryMax, def.RetryMax},
		{"store.election_timeout", s.ElectionTimeout, def.ElectionTimeout},
	}
	for _, p := range positive {
		if p.v <= 0 {
			c.add(p.field, "is %v; it must be positive, e.g. %v (the default)", p.v, p.ex)
		}
	}
	if s.KeepaliveInterval < 0 {
		c.add("store.keepalive_interval", "is %v; use 0 for store.session_ttl/3, or a positive duration", s.KeepaliveInterval)
	} else if s.KeepaliveInterval > 0 && s.KeepaliveInterval < time.Millisecond {
		c.add("store.keepalive_interval", "is %v, below 1ms, which would renew in a busy loop; use 0 for store.session_ttl/3, or 1ms or more", s.KeepaliveInterval)
	}
	if s.MaxTxnOps < 0 {
		c.add("store.max_txn_ops", "is %d; use 0 for the store's default, or a positive number", s.MaxTxnOps)
	} else if s.MaxTxnOps > 0 && s.MaxTxnOps <= 8 && (s.Type == StoreEtcd || s.Type == StoreEmbedded) {
		c.add("store.max_txn_ops", "is %d, but etcd transactions need more than 8 (concord keeps 8 for each op's conditions); use 0 for the default, or the servers' --max-txn-ops (128 unless changed)", s.MaxTxnOps)
	}
	ttl, ka, third := s.SessionTTL, s.effectiveKeepalive(), (s.SessionTTL / 3).Truncate(time.Millisecond)
	if ttl > 0 && ka > 0 {
		switch {
		case ka >= ttl:
			c.add("store.session_ttl", "%v is not longer than store.keepalive_interval %v: the TTL is shorter than the renew interval, so the session expires before it is renewed; set keepalive_interval to 0 (session_ttl/3 = %v), or raise session_ttl to %v or more (3 x keepalive_interval)", ttl, ka, third, 3*ka)
		case ka >= ttl/2:
			c.add("store.keepalive_interval", "%v is not below half of store.session_ttl %v: one late renewal would end the session; set keepalive_interval to 0 (session_ttl/3 = %v) or below %v, or raise session_ttl to %v or more", ka, ttl, third, ttl/2, 3*ka)
		}
	}
	if ttl > 0 && s.OpTimeout > 0 && s.OpTimeout >= ttl {
		c.add("store.op_timeout", "%v is not shorter than store.session_ttl %v: a store call could outlast the session; set op_timeout to at most %v (a third of session_ttl), or raise session_ttl", s.OpTimeout, ttl, third)
	}
	if s.RetryMin > 0 && s.RetryMax > 0 && s.RetryMin > s.RetryMax {
		c.add("store.retry_min", "%v is above store.retry_max %v; make retry_min at most retry_max, e.g. 50ms and 2s", s.RetryMin, s.RetryMax)
	}
}

// effectiveKeepalive is the renewal interval: KeepaliveInterval, or
// SessionTTL/3 when it is 0.
func (s Store) effectiveKeepalive() time.Duration {
	if s.KeepaliveInterval == 0 {
		return s.SessionTTL / 3
	}
	return s.KeepaliveInterval
}

func (c *checker) services() {
	svcs := c.f.Services
	if len(svcs) == 0 {
		c.add("services", "none listed; list the services this node provides, e.g. services: [{name: db, priority: 10}], or set %s=db:10", ServicesEnv)
		return
	}
	first := map[string]int{}
	for i, s := range svcs {
		field := fmt.Sprintf("services[%d].name", i)
		c.name(field, s.Name, "db")
		if j, dup := first[s.Name]; dup && s.Name != "" {
			c.add(field, "%q is already listed as services[%d]; list each service once", s.Name, j)
			continue
		}
		first[s.Name] = i
	}
	for i, s := range svcs {
		c.replication(i, s.withDefaults(), first)
	}
}

func (c *checker) proxies() {
	listens := map[string]int{}
	for i, p := range c.f.Proxies {
		pre := fmt.Sprintf("proxies[%d]", i)
		c.name(pre+".service", p.Service, "db")
		host, port, err := net.SplitHostPort(p.Listen)
		switch {
		case p.Listen == "":
			c.add(pre+".listen", "missing; give the host:port the proxy listens on, e.g. 127.0.0.1:15432")
		case err != nil || port == "":
			c.add(pre+".listen", "%q is not host:port, e.g. 127.0.0.1:15432", p.Listen)
		default:
			_ = host
			if j, dup := listens[p.Listen]; dup {
				c.add(pre+".listen", "%q is also proxies[%d].listen; give each proxy its own port", p.Listen, j)
			}
			listens[p.Listen] = i
		}
		if p.HoldTimeout < 0 {
			c.add(pre+".hold_timeout", "is %v; give a positive duration (0 means the default, %v)", p.HoldTimeout, DefaultProxyHold)
		}
		if p.DialTimeout < 0 {
			c.add(pre+".dial_timeout", "is %v; give a positive duration (0 means the default, %v)", p.DialTimeout, DefaultProxyDial)
		}
	}
}

func (c *checker) log() {
	c.oneOf("log.level", c.f.Log.Level, LogLevels)
	c.oneOf("log.format", c.f.Log.Format, LogFormats)
}

// Warnings returns advice about a valid configuration that will work but
// is probably not what the operator wants: timings near their limits,
// test-only settings, peer addresses the other members cannot reach or
// that carry plaintext, an API that serves checkpoints in plaintext, a
// cluster secret other users can read, and CONCORD_ variables that match
// no key. Each
// starts like an error, with the source and the key.
func (f *File) Warnings() []string {
	var out []string
	warn := func(field, format string, args ...any) {
		out = append(out, f.errorf(field, format, args...).Error())
	}
	s := f.Store
	ttl, third := s.SessionTTL, (s.SessionTTL / 3).Truncate(time.Millisecond)
	if ka := s.effectiveKeepalive(); ttl > 0 && ka > third+time.Millisecond && ka < ttl/2 {
		warn("store.keepalive_interval", "%v is more than a third of store.session_ttl %v; a renewal delayed by a slow store could let the session lapse; %v or less is advised", ka, ttl, third)
	}
	if ttl > 0 && s.OpTimeout > third+time.Millisecond && s.OpTimeout < ttl {
		warn("store.op_timeout", "%v is more than a third of store.session_ttl %v; one slow call can use up most of the session before a retry; %v or less is advised", s.OpTimeout, ttl, third)
	}
	if s.TLS.InsecureSkipVerify && s.Type != StoreEmbedded && s.Type != StoreMemory {
		warn("store.tls.insecure_skip_verify", "is true: the store's certificate is not checked, so anyone on the path can pose as the store; use it only for testing")
	}
	if s.Type == StoreConsul && ttl > 0 && ttl < consulMinTTL {
		warn("store.session_ttl", "%v is below %v, the shortest session TTL Consul accepts by default; it works only if the Consul servers' session_ttl_min is %v or less (otherwise the node's sessions are refused), else raise it to %v", ttl, consulMinTTL, ttl, consulMinTTL)
	}
	if s.Type == StoreMemory {
		warn("store.type", "memory keeps the store inside this process: no other node can see it and it is lost on exit; use it only for demos and tests")
	}
	if s.Type == StoreEmbedded {
		e := s.Embedded.withDefaults(f.Node.ID)
		cluster := strings.Count(e.InitialCluster, "=") > 1
		if u, err := url.Parse(e.PeerURL); err == nil && isLoopback(u.Hostname()) && cluster && !allLoopback(e.InitialCluster) {
			warn("store.embedded.peer_url", "%s is a loopback address, but store.embedded.initial_cluster has members on other hosts, which cannot reach it; use an address they can reach", e.PeerURL)
		}
		if cluster && !strings.HasPrefix(e.PeerURL, "https://") {
			warn("store.embedded.peer_url", "%s is not https, so the traffic between the members of store.embedded.initial_cluster is unencrypted and unauthenticated: whoever reaches a peer port can read the store and speak as a member; set %s (with client_cert_auth) on every member and write every peer URL as https://, or keep the peer network closed to anyone else", e.PeerURL, peerTLSKey)
		}
	}
	f.replicaWarnings(warn)
	return append(out, f.src.unknownEnv...)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func allLoopback(initialCluster string) bool {
	for part := range strings.SplitSeq(initialCluster, ",") {
		_, raw, _ := strings.Cut(part, "=")
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || !isLoopback(u.Hostname()) {
			return false
		}
	}
	return true
}
