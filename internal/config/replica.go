package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/concordha/concord/replica/agent"
)

// DefaultNodeDataDirPrefix is node.data_dir's default, before node.id.
const DefaultNodeDataDirPrefix = "concord-node-"

// ServiceDefaults returns the values Load gives the keys of a services
// item that the file leaves out (the agent's timeouts are in
// AgentDefaults): secondaries 1, sync_acks 0, checkpoint_interval 5s,
// monitor_interval 5s, max_restarts 3, restart_window 5m.
func ServiceDefaults() ReplicaService {
	return ReplicaService{
		Secondaries:        1,
		SyncAcks:           0,
		MaxRestarts:        3,
		CheckpointInterval: 5 * time.Second,
		MonitorInterval:    5 * time.Second,
		RestartWindow:      5 * time.Minute,
		Drain:              time.Second,
	}
}

// AgentDefaults returns the timeouts Load gives the keys of
// services[].agent.timeouts that the file leaves out.
func AgentDefaults() Agent {
	d := agent.DefaultTimeouts()
	return Agent{
		Start: d.Start, Stop: d.Stop, Promote: d.Promote, Demote: d.Demote,
		Monitor: d.Monitor, Checkpoint: d.Checkpoint, Restore: d.Restore,
	}
}

// Replica is what the replica manager needs from the file: the node's API,
// its local state and the services it keeps highly available. Build it
// with File.ReplicaConfig.
type Replica struct {
	// Listen is node.api.listen: where the node's API listens; "" means
	// no API.
	Listen string
	// Advertise is the address peers reach the API at: node.address, or
	// Listen when that is empty.
	Advertise string
	// DataDir is node.data_dir, relative to the working directory unless
	// absolute.
	DataDir string
	// Secret is the cluster secret (cluster.secret_file, trimmed) that
	// authenticates the nodes' APIs to each other; nil when there is no
	// API.
	Secret []byte
	// TLS is the API's server side: it presents node.api.tls.cert_file
	// and requires a client certificate that node.api.tls.ca_file
	// verifies. Nil: plain HTTP.
	TLS *tls.Config
	// ClientTLS is for calls to the peers' APIs: it verifies their
	// certificates against ca_file and presents cert_file. Nil: plain
	// HTTP.
	ClientTLS *tls.Config
	// Services lists the services in the order of the file.
	Services []ReplicaService
}

// ReplicaService is one item of services, defaults filled.
type ReplicaService struct {
	// Name is the service's name; DependsOn the service whose primary its
	// primary must share ("" if none).
	Name, DependsOn string
	// Secondaries is the desired number of secondaries; SyncAcks how many
	// of them acknowledge a synchronous checkpoint; MaxRestarts how many
	// local restarts within RestartWindow precede a resignation.
	Secondaries, SyncAcks, MaxRestarts int
	// CheckpointInterval spaces the primary's checkpoints,
	// MonitorInterval the agent's monitor actions.
	CheckpointInterval, MonitorInterval, RestartWindow time.Duration
	// Agent is the resource agent; nil: the service is election-only.
	Agent *Agent
	// Endpoint is the client address the node publishes as primary.
	Endpoint string
	// Drain is how long a primary handing over keeps serving before it
	// resigns, while new connections are held.
	Drain time.Duration
}

// Agent is a service's resource agent, as concord runs it.
type Agent struct {
	// Command is the executable's absolute path (after Load).
	Command string
	// Args go before the action name.
	Args []string
	// Dir is the actions' working directory; "" is concord's.
	Dir string
	// Params are the agent's parameters, by name.
	Params map[string]string
	// The timeouts of the actions, defaults filled.
	Start, Stop, Promote, Demote, Monitor, Checkpoint, Restore time.Duration
}

// ReplicaConfig returns the configuration of the node's API and of the
// replicated services. It reads cluster.secret_file and the files of
// node.api.tls, which Load checked; it fails, naming the key, only if
// they changed since, or if f was built in code and not validated.
func (f *File) ReplicaConfig() (Replica, error) {
	r := Replica{
		Listen:    f.Node.API.Listen,
		Advertise: f.advertise(),
		DataDir:   f.nodeDataDir(),
		Services:  make([]ReplicaService, len(f.Services)),
	}
	for i, s := range f.Services {
		r.Services[i] = s.replica()
	}
	if r.Listen == "" {
		return r, nil
	}
	secret, err := f.Cluster.SecretValue()
	switch {
	case err != nil:
		return Replica{}, f.errorf("cluster.secret_file", "%q cannot be read (%v); give the path of a readable file holding the cluster's secret", f.Cluster.SecretFile, unwrapPath(err))
	case len(secret) < MinSecretLen:
		return Replica{}, f.errorf("cluster.secret_file", "%s", secretHint(f.Cluster.SecretFile, len(secret)))
	}
	r.Secret = secret
	if t := f.Node.API.TLS; t.Enabled() {
		if r.TLS, r.ClientTLS, err = f.apiTLS(t); err != nil {
			return Replica{}, err
		}
	}
	return r, nil
}

// apiTLS loads node.api.tls into the server and client configurations.
func (f *File) apiTLS(t APITLS) (server, client *tls.Config, err error) {
	const key = "node.api.tls"
	if t.CertFile == "" || t.KeyFile == "" || t.CAFile == "" {
		return nil, nil, f.errorf(key, "needs cert_file, key_file and ca_file; set all three, or remove %s", key)
	}
	pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, nil, f.errorf(key+".cert_file", "%q with %s.key_file %q: %v; give a PEM certificate and its PEM private key", t.CertFile, key, t.KeyFile, err)
	}
	pem, err := os.ReadFile(t.CAFile)
	if err != nil {
		return nil, nil, f.errorf(key+".ca_file", "%q cannot be read (%v); give the path of a readable file", t.CAFile, unwrapPath(err))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, f.errorf(key+".ca_file", "%q holds no PEM certificate; give the CA bundle that signed the nodes' certificates", t.CAFile)
	}
	server = &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{pair},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
	client = &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    pool,
		// Present the certificate even to a server whose list of
		// acceptable CAs leaves it out, so that its refusal names the real
		// problem, as the store clients do.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil },
	}
	return server, client, nil
}

// secretHint says that the secret in file, n bytes long once trimmed, is
// too short, and how to make a good one.
func secretHint(file string, n int) string {
	return fmt.Sprintf("%q holds %d bytes once surrounding white space is trimmed, but the cluster secret needs at least %d; make one with `head -c 32 /dev/urandom | base64 > %s` and copy the file to every node", file, n, MinSecretLen, file)
}

// unwrapPath strips the path from an *fs.PathError, which messages show
// already.
func unwrapPath(err error) error {
	if u, ok := err.(interface{ Unwrap() error }); ok && u.Unwrap() != nil {
		return u.Unwrap()
	}
	return err
}

// withDefaults returns s with its nil fields set to their defaults.
func (s Service) withDefaults() Service {
	d := ServiceDefaults()
	setIfNil(&s.Secondaries, d.Secondaries)
	setIfNil(&s.CheckpointInterval, d.CheckpointInterval)
	setIfNil(&s.MonitorInterval, d.MonitorInterval)
	setIfNil(&s.MaxRestarts, d.MaxRestarts)
	setIfNil(&s.RestartWindow, d.RestartWindow)
	setIfNil(&s.Drain, d.Drain)
	if s.Agent != nil {
		a := *s.Agent
		a.Timeouts = a.Timeouts.withDefaults()
		s.Agent = &a
	}
	return s
}

// withDefaults returns t with its nil fields set to their defaults.
func (t AgentTimeouts) withDefaults() AgentTimeouts {
	d := AgentDefaults()
	setIfNil(&t.Start, d.Start)
	setIfNil(&t.Stop, d.Stop)
	setIfNil(&t.Promote, d.Promote)
	setIfNil(&t.Demote, d.Demote)
	setIfNil(&t.Monitor, d.Monitor)
	setIfNil(&t.Checkpoint, d.Checkpoint)
	setIfNil(&t.Restore, d.Restore)
	return t
}

func setIfNil[T any](p **T, v T) {
	if *p == nil {
		*p = &v
	}
}

// replica returns s as ReplicaService, defaults filled. The agent's slices
// and maps are copies.
func (s Service) replica() ReplicaService {
	s = s.withDefaults()
	r := ReplicaService{
		Name:               s.Name,
		DependsOn:          s.DependsOn,
		Secondaries:        *s.Secondaries,
		SyncAcks:           s.SyncAcks,
		MaxRestarts:        *s.MaxRestarts,
		CheckpointInterval: *s.CheckpointInterval,
		MonitorInterval:    *s.MonitorInterval,
		RestartWindow:      *s.RestartWindow,
		Endpoint:           s.Endpoint,
		Drain:              *s.Drain,
	}
	if a := s.Agent; a != nil {
		t := a.Timeouts
		r.Agent = &Agent{
			Command: a.Command, Args: slices.Clone(a.Args), Dir: a.Dir, Params: maps.Clone(a.Params),
			Start: *t.Start, Stop: *t.Stop, Promote: *t.Promote, Demote: *t.Demote,
			Monitor: *t.Monitor, Checkpoint: *t.Checkpoint, Restore: *t.Restore,
		}
	}
	return r
}

// Defaults of proxies[].
const (
	DefaultProxyHold = 10 * time.Second
	DefaultProxyDial = 2 * time.Second
)

// ProxyConfigs returns proxies[], defaults filled.
func (f *File) ProxyConfigs() []Proxy {
	out := slices.Clone(f.Proxies)
	for i := range out {
		if out[i].HoldTimeout == 0 {
			out[i].HoldTimeout = DefaultProxyHold
		}
		if out[i].DialTimeout == 0 {
			out[i].DialTimeout = DefaultProxyDial
		}
	}
	return out
}
