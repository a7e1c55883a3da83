package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The checks of the keys of the replica manager: the node's API, the
// cluster secret, node.data_dir, and the replication keys and agents of
// the services. Files and commands are checked as the node will use
// them, so that a node that passes Load does not fail at start.

// secretHowTo is the command the messages suggest for making a secret.
const secretHowTo = "head -c 32 /dev/urandom | base64 > "

// withAgent returns the index of the first service with an agent, or -1.
func (f *File) withAgent() int {
	return slices.IndexFunc(f.Services, func(s Service) bool { return s.Agent != nil })
}

// nodeAPI checks node.api, and node.address as the address peers dial.
func (c *checker) nodeAPI() {
	n := c.f.Node
	api := n.API
	if api.Listen == "" {
		if i := c.f.withAgent(); i >= 0 {
			c.add("node.api.listen", "missing; services[%d].agent (%s) runs a resource agent, and the nodes exchange its checkpoints through their APIs: set node.api.listen to the host:port the API listens on, e.g. 127.0.0.1:7101", i, c.f.Services[i].Name)
		}
		if api.TLS.Enabled() {
			c.add("node.api.tls", "is set, but node.api.listen is not, so there is no API to secure; set node.api.listen, or remove node.api.tls")
		}
		return
	}
	listenOK := true
	if msg := hostPortProblem(api.Listen, true); msg != "" {
		c.add("node.api.listen", "%q %s; write host:port, e.g. 127.0.0.1:7101 (or :7101 for every interface)", api.Listen, msg)
		listenOK = false
	}
	advertiseOK := listenOK
	switch _, port, _ := net.SplitHostPort(api.Listen); {
	case n.Address != "":
		if msg := hostPortProblem(n.Address, false); msg != "" {
			c.add("node.address", "%q %s; write the host:port where the other nodes reach this node's API (node.api.listen), e.g. 10.0.0.1:7101", n.Address, msg)
			advertiseOK = false
		}
	case listenOK && unspecifiedHost(api.Listen):
		c.add("node.address", "missing; node.api.listen %q listens on every interface, which is no address the other nodes can dial: set node.address to the host:port where they reach this node, e.g. 10.0.0.1:%s", api.Listen, port)
		advertiseOK = false
	}
	if listenOK && c.f.Store.Type == StoreEmbedded {
		e := c.f.Store.Embedded.withDefaults(n.ID)
		for _, u := range []struct{ key, raw string }{{"store.embedded.client_url", e.ClientURL}, {"store.embedded.peer_url", e.PeerURL}} {
			if sameListener(api.Listen, u.raw) {
				c.add("node.api.listen", "%q takes the port of %s %s; give the API a port of its own, e.g. 7101", api.Listen, u.key, u.raw)
			}
		}
	}
	if api.TLS.Enabled() {
		c.apiTLS(api.TLS, advertiseOK)
	}
}

// hostPortProblem says what is wrong with a host:port, "" if nothing.
// A listen address may leave the host out or make it unspecified (every
// interface); an address to dial may not.
func hostPortProblem(s string, listen bool) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil || strings.ContainsFunc(s, func(r rune) bool { return r == ' ' || r == '\t' }) {
		return "is not host:port"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "has no valid port (1 to 65535)"
	}
	if !listen && (host == "" || unspecifiedHost(s)) {
		return "names no host the other nodes can dial (an empty host, 0.0.0.0 or :: means every interface)"
	}
	return ""
}

// unspecifiedHost reports whether the host of hostport is empty, 0.0.0.0
// or ::, which listen on every interface.
func unspecifiedHost(hostport string) bool {
	host, _, _ := net.SplitHostPort(hostport)
	ip := net.ParseIP(host)
	return host == "" || ip != nil && ip.IsUnspecified()
}

// sameListener reports whether listen (host:port) and the URL raw would
// listen on the same port of one address.
func sameListener(listen, raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil || port != u.Port() {
		return false
	}
	return host == u.Hostname() || unspecifiedHost(listen) || unspecifiedHost(u.Host)
}

// apiTLS checks node.api.tls: three files, which load, and a certificate
// that the other nodes, checking it against the same ca_file, accept as a
// server at the address they dial (when advertiseOK) and as a client.
func (c *checker) apiTLS(t APITLS, advertiseOK bool) {
	const key = "node.api.tls"
	const all = "node.api.tls is mutual: every node presents its certificate (cert_file, key_file) and checks the others' against ca_file; set all three, or remove node.api.tls"
	for _, k := range []struct{ field, v string }{{"cert_file", t.CertFile}, {"key_file", t.KeyFile}, {"ca_file", t.CAFile}} {
		if k.v == "" {
			c.add(key+"."+k.field, "missing; %s", all)
		}
	}
	certOK, keyOK := c.readable(key+".cert_file", t.CertFile), c.readable(key+".key_file", t.KeyFile)
	caOK := c.readable(key+".ca_file", t.CAFile)
	if !certOK || !keyOK || !caOK {
		return
	}
	member := c.keyPair(key+".cert_file", key+".key_file", t.CertFile, t.KeyFile)
	roots := c.caPool(key+".ca_file", t.CAFile)
	if member == nil || roots == nil {
		return
	}
	field := key + ".cert_file"
	host := ""
	if advertiseOK {
		host, _, _ = net.SplitHostPort(c.f.advertise())
	}
	var authErr x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	if err := verify(member, roots, host, x509.ExtKeyUsageServerAuth); err != nil {
		switch {
		case errors.As(err, &hostErr):
			c.add(field, "%q does not name %s, the host the other nodes dial (node.address, else node.api.listen), so they would refuse it; reissue it with %s among its subject alternative names, or set node.address to a host it names", t.CertFile, host, host)
		case errors.As(err, &authErr):
			c.add(field, "%q is not signed by the CA in %s.ca_file %q, so the other nodes (which share ca_file) would refuse it; set ca_file to the CA bundle that signed it, on every node", t.CertFile, key, t.CAFile)
		default:
			c.add(field, "%q %s, so the other nodes would refuse it; %s", t.CertFile, certProblem(err, "server"), certFix(err, "serverAuth"))
		}
		return
	}
	if err := verify(member, roots, "", x509.ExtKeyUsageClientAuth); err != nil {
		switch {
		case errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage:
			c.add(field, "%q is not valid for client authentication (its extended key usage lacks clientAuth), but the node presents it when it calls the other nodes' APIs, which would refuse it; reissue it with clientAuth as well as serverAuth", t.CertFile)
		default:
			c.add(field, "%q %s, so the other nodes would refuse this node's calls; %s", t.CertFile, certProblem(err, "client"), certFix(err, "clientAuth"))
		}
	}
}

// secret checks cluster.secret_file: required with node.api.listen, and,
// when set, a readable file with a long enough secret. The secret itself
// is never shown.
func (c *checker) secret() {
	const field = "cluster.secret_file"
	file := c.f.Cluster.SecretFile
	if file == "" {
		if c.f.Node.API.Listen != "" {
			c.add(field, "missing; node.api.listen is set, and the nodes' APIs authenticate each other with a secret they share: make one with `%scluster.secret`, copy the file to every node, and set secret_file: cluster.secret", secretHowTo)
		}
		return
	}
	if why := unreadable(file); why != "" {
		c.add(field, "%q %s; give the path of a readable file holding the cluster's secret (relative paths start at the working directory), or make one with `%s%s` and copy it to every node", file, why, secretHowTo, file)
		return
	}
	b, err := c.f.Cluster.SecretValue()
	if err != nil {
		c.add(field, "%q cannot be read (%v); give the path of a readable file holding the cluster's secret", file, unwrapPath(err))
		return
	}
	if len(b) < MinSecretLen {
		c.add(field, "%s", secretHint(file, len(b)))
	}
}

// dataDir checks node.data_dir: a directory if it exists, and not the
// embedded store's.
func (c *checker) dataDir() {
	d := c.f.nodeDataDir()
	if d == "" {
		return // only without node.id, reported there
	}
	if st, err := os.Stat(d); err == nil && !st.IsDir() {
		c.add("node.data_dir", "%q is a file, not a directory; give a directory for concord to create and keep, or move the file away", d)
	}
	if c.f.Store.Type == StoreEmbedded {
		e := c.f.Store.Embedded.withDefaults(c.f.Node.ID)
		if filepath.Clean(d) == filepath.Clean(e.DataDir) {
			c.add("node.data_dir", "%q is also store.embedded.data_dir; give each its own directory, e.g. %s%s", d, DefaultNodeDataDirPrefix, c.f.Node.ID)
		}
	}
}

// replication checks the replication keys and the agent of services[i],
// given as s with defaults filled; index maps the names to their first
// item.
func (c *checker) replication(i int, s Service, index map[string]int) {
	p := fmt.Sprintf("services[%d]", i)
	if strings.HasPrefix(s.Name, ReservedServicePrefix) {
		c.add(p+".name", "%q starts with %q, which is reserved for concord's own services; rename it", s.Name, ReservedServicePrefix)
	}
	c.dependsOn(i, s, index)
	def := ServiceDefaults()
	if *s.Secondaries < 0 {
		c.add(p+".secondaries", "is %d; give 0 or more (the default is %d)", *s.Secondaries, def.Secondaries)
	}
	switch {
	case s.SyncAcks < 0:
		c.add(p+".sync_acks", "is %d; give 0 (checkpoints complete without waiting) up to %s.secondaries", s.SyncAcks, p)
	case *s.Secondaries >= 0 && s.SyncAcks > *s.Secondaries:
		c.add(p+".sync_acks", "%d is more than %s.secondaries %d: a synchronous checkpoint would wait for acknowledgements from secondaries that do not exist; lower sync_acks, or raise secondaries", s.SyncAcks, p, *s.Secondaries)
	}
	if s.Endpoint != "" {
		if host, port, err := net.SplitHostPort(s.Endpoint); err != nil || host == "" || port == "" {
			c.add(p+".endpoint", "%q is not host:port; give the address clients reach the service at on this node, e.g. 10.0.0.1:5432", s.Endpoint)
		} else if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			c.add(p+".endpoint", "%q names every interface, which no client can dial; give this node's address", s.Endpoint)
		}
	}
	if *s.Drain < 0 {
		c.add(p+".drain", "is %v; give 0 (resign at once in a switchover) or a positive duration, e.g. %v (the default)", *s.Drain, def.Drain)
	}
	if *s.MaxRestarts < 0 {
		c.add(p+".max_restarts", "is %d; give 0 (resign at the first failure) or more (the default is %d)", *s.MaxRestarts, def.MaxRestarts)
	}
	for _, d := range []struct {
		key    string
		v, def time.Duration
	}{
		{"checkpoint_interval", *s.CheckpointInterval, def.CheckpointInterval},
		{"monitor_interval", *s.MonitorInterval, def.MonitorInterval},
		{"restart_window", *s.RestartWindow, def.RestartWindow},
	} {
		if d.v <= 0 {
			c.add(p+"."+d.key, "is %v; it must be positive, e.g. %v (the default)", d.v, d.def)
		}
	}
	if s.Agent != nil {
		c.agent(p+".agent", s.Agent)
	}
}

// dependsOn checks services[i].depends_on: another service of the list,
// and no cycle. A cycle is reported once, at its first service.
func (c *checker) dependsOn(i int, s Service, index map[string]int) {
	if s.DependsOn == "" {
		return
	}
	field := fmt.Sprintf("services[%d].depends_on", i)
	j, ok := index[s.DependsOn]
	switch {
	case s.DependsOn == s.Name:
		c.add(field, "%q is the service itself; name another service of this node, or remove depends_on", s.DependsOn)
		return
	case !ok:
		c.add(field, "%q is not a service of this node; a node must provide a service's dependency too, so that their primaries can be the same node: list %s in services, or fix the name", s.DependsOn, s.DependsOn)
		return
	}
	chain := []string{s.Name}
	for seen := map[int]bool{i: true}; ; {
		chain = append(chain, c.f.Services[j].Name)
		if j == i {
			if slices.Min(indexes(chain, index)) == i {
				c.add(field, "%q closes a cycle: %s; dependencies must form a tree, so remove one depends_on of the cycle", s.DependsOn, strings.Join(chain, " -> "))
			}
			return
		}
		if seen[j] {
			return // a cycle that i only leads into, reported at its own services
		}
		seen[j] = true
		next, ok := index[c.f.Services[j].DependsOn]
		if c.f.Services[j].DependsOn == "" || !ok {
			return
		}
		j = next
	}
}

// indexes maps names to their first index in services.
func indexes(names []string, index map[string]int) []int {
	out := make([]int, len(names))
	for k, n := range names {
		out[k] = index[n]
	}
	return out
}

// agent checks services[i].agent (at key), timeouts filled.
func (c *checker) agent(key string, a *ServiceAgent) {
	if a.Command == "" {
		c.add(key+".command", "missing; give the path of the service's resource agent, e.g. ./kvstore (relative paths start at the working directory), or remove %s to make the service election-only", key)
	} else if _, why := resolveCommand(a.Command); why != "" {
		c.add(key+".command", "%s", why)
	}
	for i, arg := range a.Args {
		if strings.IndexByte(arg, 0) >= 0 {
			c.add(fmt.Sprintf("%s.args[%d]", key, i), "holds a NUL byte, which no command line can carry; remove it")
		}
	}
	if a.Dir != "" {
		tried := ""
		if abs, err := filepath.Abs(a.Dir); err == nil && abs != a.Dir {
			tried = " (tried " + abs + ")"
		}
		switch st, err := os.Stat(a.Dir); {
		case errors.Is(err, fs.ErrNotExist):
			c.add(key+".dir", "%q%s does not exist; create it, or leave dir empty for the directory concord runs in", a.Dir, tried)
		case err != nil:
			c.add(key+".dir", "%q cannot be used (%v); give an existing directory, or leave dir empty", a.Dir, unwrapPath(err))
		case !st.IsDir():
			c.add(key+".dir", "%q is not a directory; give an existing directory, or leave dir empty", a.Dir)
		}
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range a.Params {
			if !yield(n) {
				return
			}
		}
	})
	upper := map[string]string{}
	for _, n := range names {
		field := fmt.Sprintf("%s.params[%s]", key, n)
		if !validParamName(n) {
			c.add(field, "the name %q holds other characters than letters, digits and '_', but it becomes the environment variable CONCORD_PARAM_<NAME>; rename it", n)
			continue
		}
		if other, dup := upper[strings.ToUpper(n)]; dup {
			c.add(field, "the names %q and %q are both CONCORD_PARAM_%s to the agent; rename one", other, n, strings.ToUpper(n))
		}
		upper[strings.ToUpper(n)] = n
		if strings.IndexByte(a.Params[n], 0) >= 0 {
			c.add(field, "the value holds a NUL byte, which no environment variable can carry; remove it")
		}
	}
	t, def := a.Timeouts.withDefaults(), AgentDefaults()
	for _, d := range []struct {
		key    string
		v, def time.Duration
	}{
		{"start", *t.Start, def.Start}, {"stop", *t.Stop, def.Stop},
		{"promote", *t.Promote, def.Promote}, {"demote", *t.Demote, def.Demote},
		{"monitor", *t.Monitor, def.Monitor}, {"checkpoint", *t.Checkpoint, def.Checkpoint},
		{"restore", *t.Restore, def.Restore},
	} {
		if d.v <= 0 {
			c.add(key+".timeouts."+d.key, "is %v; it must be positive, e.g. %v (the default)", d.v, d.def)
		}
	}
}

// validParamName reports whether name is a non-empty run of ASCII
// letters, digits and '_'.
func validParamName(name string) bool {
	if name == "" {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

// resolveCommand returns the absolute path of the agent's command, or
// what is wrong with it: a path (containing "/") is taken from the working
// directory; a bare name is looked up in PATH, as a shell would.
func resolveCommand(cmd string) (abs, problem string) {
	if !strings.ContainsRune(cmd, '/') && !strings.ContainsRune(cmd, filepath.Separator) {
		p, err := exec.LookPath(cmd)
		if err != nil {
			return "", fmt.Sprintf("%q is not an executable found in PATH; give its path, e.g. ./%s for one in the working directory", cmd, cmd)
		}
		if abs, err = filepath.Abs(p); err != nil {
			return "", fmt.Sprintf("%q found in PATH as %s, which cannot be made absolute (%v); give its absolute path", cmd, p, err)
		}
		return abs, ""
	}
	abs, err := filepath.Abs(cmd)
	if err != nil {
		return "", fmt.Sprintf("%q cannot be made absolute (%v); give its absolute path", cmd, err)
	}
	tried := ""
	if abs != cmd {
		tried = " (tried " + abs + ")"
	}
	st, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Sprintf("%q%s does not exist; build or install the agent there, or give its path (relative paths start at the working directory)", cmd, tried)
	case err != nil:
		return "", fmt.Sprintf("%q%s cannot be used (%v); give the path of the agent's executable", cmd, tried, unwrapPath(err))
	case st.IsDir():
		return "", fmt.Sprintf("%q%s is a directory; give the path of the agent's executable", cmd, tried)
	case runtime.GOOS != "windows" && st.Mode().Perm()&0o111 == 0:
		return "", fmt.Sprintf("%q%s is not executable (mode %v); make it so with chmod +x %s", cmd, tried, st.Mode().Perm(), abs)
	}
	return abs, ""
}

// resolveAgentPaths makes the agents' commands and directories absolute,
// as Validate found them, so that a later change of the working directory
// does not change what runs.
func (f *File) resolveAgentPaths() {
	for i := range f.Services {
		a := f.Services[i].Agent
		if a == nil {
			continue
		}
		if abs, why := resolveCommand(a.Command); why == "" {
			a.Command = abs
		}
		if a.Dir != "" {
			if abs, err := filepath.Abs(a.Dir); err == nil {
				a.Dir = abs
			}
		}
	}
}

// replicaWarnings returns the advice of Warnings about the replica keys.
func (f *File) replicaWarnings(warn func(field, format string, args ...any)) {
	for i, s := range f.Services {
		s = s.withDefaults()
		if s.Agent == nil {
			continue
		}
		if m, iv := *s.Agent.Timeouts.Monitor, *s.MonitorInterval; m >= iv {
			warn(fmt.Sprintf("services[%d].agent.timeouts.monitor", i), "%v is not shorter than services[%d].monitor_interval %v: a slow monitor action would run into the next one, and a hung service is found only after %v; set timeouts.monitor below %v, or raise monitor_interval", m, i, iv, m, iv)
		}
	}
	// A proxy on this node for a service this node publishes holds new
	// connections through that service's drain and the election after
	// it; a hold_timeout no longer than the drain would close them first.
	for i, p := range f.ProxyConfigs() {
		for j, s := range f.Services {
			s = s.withDefaults()
			if s.Name == p.Service && s.Endpoint != "" && *s.Drain > 0 && p.HoldTimeout <= *s.Drain {
				warn(fmt.Sprintf("proxies[%d].hold_timeout", i), "%v is not longer than services[%d].drain %v: in a switchover, connections held while %q drains would be closed before its next primary serves; raise hold_timeout above the drain plus an election (the default is %v), or lower the drain", p.HoldTimeout, j, *s.Drain, s.Name, DefaultProxyHold)
			}
		}
	}
	api := f.Node.API
	if api.Listen != "" && !api.TLS.Enabled() {
		host, _, err := net.SplitHostPort(api.Listen)
		if err == nil && !isLoopback(host) {
			warn("node.api.listen", "%s is not a loopback address and node.api.tls is not set, so checkpoints (the services' whole state) cross the network in plaintext; set node.api.tls, or keep the network closed to anyone else", api.Listen)
		}
	}
	if file := f.Cluster.SecretFile; file != "" {
		if api.Listen == "" {
			warn("cluster.secret_file", "is set, but node.api.listen is not, so nothing uses it; set node.api.listen, or remove secret_file")
		}
		if st, err := os.Stat(file); err == nil && runtime.GOOS != "windows" && st.Mode().Perm()&0o077 != 0 {
			warn("cluster.secret_file", "%q can be read by other users (mode %v); make it private with chmod 600 %s", file, st.Mode().Perm(), file)
		}
	}
}
