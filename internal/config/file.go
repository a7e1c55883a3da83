package config

import (
	"bytes"
	"os"
	"strings"
	"time"

	"github.com/concordha/concord/core"
)

// Store types, the values of store.type.
const (
	// StoreEmbedded runs an etcd server inside concord; nodes that list
	// each other in store.embedded.initial_cluster form one etcd cluster.
	StoreEmbedded = "embedded"
	// StoreEtcd uses an external etcd cluster.
	StoreEtcd = "etcd"
	// StoreConsul uses an external Consul cluster.
	StoreConsul = "consul"
	// StoreZooKeeper uses an external ZooKeeper ensemble.
	StoreZooKeeper = "zookeeper"
	// StoreMemory keeps the store inside this one process: only for demos
	// and tests, since no other process can see it and it dies with it.
	StoreMemory = "memory"
)

// StoreTypes lists the valid values of store.type, the default first.
var StoreTypes = []string{StoreEmbedded, StoreEtcd, StoreConsul, StoreZooKeeper, StoreMemory}

// File is a loaded configuration file. The mapstructure tags are the YAML
// keys; the stores tags say which store types use a key (none: all).
// Load derives the key list, the environment variables and the
// "only the X store uses this" checks from these tags.
type File struct {
	// Path is the file the configuration was read from, as given to Load.
	// Errors start with it.
	Path string `mapstructure:"-"`

	Node     Node      `mapstructure:"node"`
	Cluster  Cluster   `mapstructure:"cluster"`
	Store    Store     `mapstructure:"store"`
	Services []Service `mapstructure:"services"`
	// Proxies are the TCP proxies this node runs, each forwarding to a
	// service's current primary.
	Proxies []Proxy `mapstructure:"proxies"`
	Log     Log     `mapstructure:"log"`

	// src says where values came from, for error messages. Zero for a
	// File built in code.
	src sources
}

// Node identifies this concord node.
type Node struct {
	// ID is this node's unique, stable ID (core.ValidateName rules).
	// Required.
	ID string `mapstructure:"id"`
	// Address is the host:port where peers reach this node's API, and is
	// published in the member record for clients and peers. Empty means
	// API.Listen. Without an API it is optional and free-form.
	Address string `mapstructure:"address"`
	// DataDir holds node-local state: checkpoint spools and the stamps of
	// the last checkpoints applied. Relative to the working directory
	// unless absolute. Default "concord-node-<node.id>".
	DataDir string `mapstructure:"data_dir"`
	// API is the node's HTTP API, which peers fetch checkpoints from and
	// local agents call.
	API API `mapstructure:"api"`
}

// API configures the node's HTTP API.
type API struct {
	// Listen is the host:port the API listens on (":7101" or
	// "0.0.0.0:7101" for every interface). Required when any service has
	// an agent; empty means no API.
	Listen string `mapstructure:"listen"`
	// TLS, once any of its keys is set, serves the API over mutual TLS
	// only, and calls peers' APIs with it.
	TLS APITLS `mapstructure:"tls"`
}

// APITLS is node.api.tls: mutual TLS between the nodes' APIs. Every node
// serves its certificate, presents it when it calls a peer, and checks the
// peer's against CAFile; so the certificate must allow both server and
// client authentication and name the host of the address peers dial
// (node.address, else node.api.listen). All three files are required once
// any is set. The files are PEM; relative paths start at the working
// directory.
type APITLS struct {
	CertFile string `mapstructure:"cert_file"`
	KeyFile  string `mapstructure:"key_file"`
	CAFile   string `mapstructure:"ca_file"`
}

// Enabled reports whether any key is set, which turns TLS on.
func (t APITLS) Enabled() bool { return t != APITLS{} }

// Cluster holds what all nodes of one cluster share.
type Cluster struct {
	// Prefix is the key root of the cluster in the store; it must end
	// with "/". Default "concord/".
	Prefix string `mapstructure:"prefix"`
	// SecretFile holds the secret that authenticates the nodes' APIs to
	// each other, the same on every node: at least MinSecretLen bytes
	// once surrounding white space is trimmed. Required when
	// node.api.listen is set. The secret itself never appears in errors.
	SecretFile string `mapstructure:"secret_file"`
}

// MinSecretLen is the shortest cluster secret accepted, in bytes.
const MinSecretLen = 16

// SecretValue returns the contents of SecretFile without surrounding white
// space; nil, and no error, when SecretFile is empty.
func (c Cluster) SecretValue() ([]byte, error) {
	if c.SecretFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(c.SecretFile)
	if err != nil {
		return nil, err
	}
	return bytes.TrimSpace(b), nil
}

// Store says which store holds the election state and how to talk to it.
type Store struct {
	// Type is one of StoreTypes. Default embedded.
	Type string `mapstructure:"type"`
	// Endpoints are the servers of an external store. Required for etcd,
	// consul and zookeeper.
	Endpoints []string `mapstructure:"endpoints" stores:"etcd,consul,zookeeper"`
	// DialTimeout bounds connecting to the store. Default 5s.
	DialTimeout time.Duration `mapstructure:"dial_timeout"`
	// SessionTTL is how long the store keeps a silent node's session: the
	// failure-detection bound. Default 10s.
	SessionTTL time.Duration `mapstructure:"session_ttl"`
	// KeepaliveInterval is how often the session is renewed. 0 in the file
	// means SessionTTL/3, and Load replaces it with that value. Must be
	// below SessionTTL/2 so that one lost renewal does not end the session.
	KeepaliveInterval time.Duration `mapstructure:"keepalive_interval"`
	// OpTimeout bounds each store operation; below SessionTTL, at most a
	// third of it advised. Default 3s.
	OpTimeout time.Duration `mapstructure:"op_timeout"`
	// RetryMin and RetryMax bound the backoff after store errors.
	// Defaults 50ms and 2s.
	RetryMin time.Duration `mapstructure:"retry_min"`
	RetryMax time.Duration `mapstructure:"retry_max"`
	// ElectionTimeout is how long a disqualified node waits for the winner
	// to claim before it runs the election again. Default 20s.
	ElectionTimeout time.Duration `mapstructure:"election_timeout"`
	// MaxTxnOps caps the operations in one store transaction; 0 means the
	// backend's default.
	MaxTxnOps int `mapstructure:"max_txn_ops"`

	TLS      TLS      `mapstructure:"tls" stores:"etcd,consul,zookeeper"`
	Auth     Auth     `mapstructure:"auth"`
	Embedded Embedded `mapstructure:"embedded" stores:"embedded"`
}

// TLS configures TLS to an external store. Relative paths start at the
// working directory. Load checks that set files exist and are readable.
type TLS struct {
	// CAFile verifies the servers' certificates; empty means the system
	// roots.
	CAFile string `mapstructure:"ca_file"`
	// CertFile and KeyFile are the client certificate and its key: both
	// or neither.
	CertFile string `mapstructure:"cert_file"`
	KeyFile  string `mapstructure:"key_file"`
	// ServerName overrides the name checked in the servers' certificates.
	ServerName string `mapstructure:"server_name"`
	// InsecureSkipVerify turns the certificate check off. Testing only.
	InsecureSkipVerify bool `mapstructure:"insecure_skip_verify"`
}

// Enabled reports whether any TLS setting is given, which is what turns
// TLS on for the store connection (https:// endpoints turn it on too).
func (t TLS) Enabled() bool { return t != TLS{} }

// Auth holds the credentials of an external store. Each field is used by
// one store type only. Relative paths start at the working directory.
type Auth struct {
	// Username with Password or PasswordFile (not both): etcd.
	Username     string `mapstructure:"username" stores:"etcd"`
	Password     string `mapstructure:"password" stores:"etcd" secret:"true"`
	PasswordFile string `mapstructure:"password_file" stores:"etcd"`
	// Token or TokenFile (not both): a Consul ACL token.
	Token     string `mapstructure:"token" stores:"consul" secret:"true"`
	TokenFile string `mapstructure:"token_file" stores:"consul"`
	// Digest is a ZooKeeper "user:password" digest credential.
	Digest string `mapstructure:"digest" stores:"zookeeper" secret:"true"`
}

// PasswordValue returns Password, or the contents of PasswordFile without
// surrounding white space (files usually end in a newline).
func (a Auth) PasswordValue() (string, error) {
	return secretValue(a.Password, a.PasswordFile)
}

// TokenValue returns Token, or the contents of TokenFile without
// surrounding white space.
func (a Auth) TokenValue() (string, error) {
	return secretValue(a.Token, a.TokenFile)
}

func secretValue(inline, file string) (string, error) {
	if file == "" {
		return inline, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// Embedded configures the etcd server that the embedded store runs inside
// concord. Load fills the defaults only when store.type is embedded.
type Embedded struct {
	// DataDir holds the server's data, relative to the working directory
	// unless absolute. Default "concord-data".
	DataDir string `mapstructure:"data_dir"`
	// Name is the member name in InitialCluster. Default node.id.
	Name string `mapstructure:"name"`
	// ClientURL is where concord (and etcdctl) reach the server. Default
	// http://127.0.0.1:2379, or https with ClientTLS.
	ClientURL string `mapstructure:"client_url"`
	// PeerURL is where the other members reach this one. Default
	// http://127.0.0.1:2380, or https with PeerTLS.
	PeerURL string `mapstructure:"peer_url"`
	// InitialCluster lists the members as "name=peer_url,..." and must
	// contain this member's Name=PeerURL. Default: this member alone.
	InitialCluster string `mapstructure:"initial_cluster"`
	// ClusterState is "new" to form a cluster, "existing" to join one.
	// Default new.
	ClusterState string `mapstructure:"cluster_state"`
	// ClusterToken keeps members of different clusters from joining each
	// other. Default "concord".
	ClusterToken string `mapstructure:"cluster_token"`
	// ClientTLS, once any of its keys is set, serves clients (this node's
	// own client included) over TLS only: ClientURL must then be https,
	// and defaults to https://127.0.0.1:2379.
	ClientTLS EmbeddedClientTLS `mapstructure:"client_tls"`
	// PeerTLS, once any of its keys is set, secures the traffic between
	// members: PeerURL and every URL of InitialCluster must then be
	// https, and every member needs it. PeerURL defaults to
	// https://127.0.0.1:2380.
	PeerTLS EmbeddedTLS `mapstructure:"peer_tls"`
}

// EmbeddedTLS is the certificate setup of one listener of the embedded
// etcd member: store.embedded.peer_tls, and the first four keys of
// store.embedded.client_tls. The files are PEM; relative paths start at
// the working directory. Load checks that they exist and hold what the
// member and its clients need.
type EmbeddedTLS struct {
	// CertFile and KeyFile are the member's certificate and its key; both
	// are required. The certificate must name the host of the URL it
	// serves (an IP SAN of 127.0.0.1 for the loopback defaults). For
	// peers the member also presents it when it dials the others.
	CertFile string `mapstructure:"cert_file"`
	KeyFile  string `mapstructure:"key_file"`
	// CAFile is the CA bundle that verifies the certificates presented to
	// the member (required with ClientCertAuth) and, for peers, the other
	// members' certificates, and, for clients, the member's certificate to
	// this node's own client. Empty means the system's roots.
	CAFile string `mapstructure:"ca_file"`
	// ClientCertAuth refuses every connection whose client (or peer) does
	// not present a certificate that CAFile verifies. For peers, the
	// certificate must then allow client authentication as well as server
	// authentication (extended key usages clientAuth and serverAuth).
	ClientCertAuth bool `mapstructure:"client_cert_auth"`
}

// Enabled reports whether any key is set, which turns TLS on.
func (t EmbeddedTLS) Enabled() bool { return t != EmbeddedTLS{} }

// EmbeddedClientTLS is store.embedded.client_tls: the member's client
// listener (the keys of EmbeddedTLS), and the certificate this node's own
// client presents to it when ClientCertAuth is on.
type EmbeddedClientTLS struct {
	CertFile       string `mapstructure:"cert_file"`
	KeyFile        string `mapstructure:"key_file"`
	CAFile         string `mapstructure:"ca_file"`
	ClientCertAuth bool   `mapstructure:"client_cert_auth"`
	// ClientCertFile and ClientKeyFile are the certificate and key this
	// node's own client presents to the member with ClientCertAuth: both
	// or neither, and only with ClientCertAuth. Without them the client
	// presents CertFile and KeyFile, which must then allow client
	// authentication (see NodeClientCert).
	ClientCertFile string `mapstructure:"client_cert_file"`
	ClientKeyFile  string `mapstructure:"client_key_file"`
}

// Enabled reports whether any key is set, which turns TLS on.
func (t EmbeddedClientTLS) Enabled() bool { return t != EmbeddedClientTLS{} }

// Listener returns the member's side of t: its certificate, CA and
// ClientCertAuth.
func (t EmbeddedClientTLS) Listener() EmbeddedTLS {
	return EmbeddedTLS{CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.CAFile, ClientCertAuth: t.ClientCertAuth}
}

// NodeClientCert returns the certificate and key that this node's own
// client presents to its embedded member: none without ClientCertAuth
// (the member asks for none), ClientCertFile and ClientKeyFile when set,
// else the member's own CertFile and KeyFile. Nothing is generated.
func (t EmbeddedClientTLS) NodeClientCert() (certFile, keyFile string) {
	switch {
	case !t.ClientCertAuth:
		return "", ""
	case t.ClientCertFile != "" || t.ClientKeyFile != "":
		return t.ClientCertFile, t.ClientKeyFile
	}
	return t.CertFile, t.KeyFile
}

// ReservedServicePrefix starts the names of concord's own services; no
// configured service may use it.
const ReservedServicePrefix = "concord."

// Service is one service this node provides.
//
// The pointer fields are nil when the file leaves the key out, and Load
// then sets them to their defaults (see ServiceDefaults), so that an
// explicit 0 in the file stays an explicit 0 (valid for secondaries and
// max_restarts, refused for the durations). In a File built in code, nil
// means the default.
type Service struct {
	// Name is unique in the cluster (core.ValidateName rules), and must
	// not start with ReservedServicePrefix.
	Name string `mapstructure:"name"`
	// Priority breaks ties among equally ranked providers: higher wins.
	// Default 0.
	Priority int `mapstructure:"priority"`
	// DependsOn names another service of this node's list whose primary
	// this one's must share. Optional.
	DependsOn string `mapstructure:"depends_on"`
	// Secondaries is how many secondaries the service should have (nodes
	// that receive its checkpoints). At least 0; default 1.
	Secondaries *int `mapstructure:"secondaries"`
	// SyncAcks is how many secondaries must acknowledge a synchronous
	// checkpoint before it completes: 0 to Secondaries. Default 0.
	SyncAcks int `mapstructure:"sync_acks"`
	// CheckpointInterval is how often the primary sends a checkpoint to
	// its secondaries. Positive; default 5s.
	CheckpointInterval *time.Duration `mapstructure:"checkpoint_interval"`
	// MonitorInterval is how often the agent's monitor action runs.
	// Positive; default 5s.
	MonitorInterval *time.Duration `mapstructure:"monitor_interval"`
	// MaxRestarts is how many local restarts within RestartWindow the node
	// tries before it resigns the service. At least 0; default 3.
	MaxRestarts *int `mapstructure:"max_restarts"`
	// RestartWindow is the window MaxRestarts counts in. Positive;
	// default 5m.
	RestartWindow *time.Duration `mapstructure:"restart_window"`
	// Agent is the service's resource agent; nil makes the service
	// election-only: concord elects its primary and runs nothing.
	Agent *ServiceAgent `mapstructure:"agent"`
	// Endpoint is the service's client address on this node (host:port),
	// which the node publishes for clients once it is the service's
	// primary (package client). Optional.
	Endpoint string `mapstructure:"endpoint"`
	// Drain is how long a primary that hands the service over (a
	// switchover) keeps serving the connections it has, while clients'
	// new connections are held, before its last checkpoint and its
	// resignation. Only with Endpoint. At least 0; default 1s.
	Drain *time.Duration `mapstructure:"drain"`
}

// Proxy is proxies[]: a TCP proxy on this node to a service's current
// primary (package proxy). The service need not be one this node
// provides.
type Proxy struct {
	// Service is the service whose primary connections go to. Required.
	Service string `mapstructure:"service"`
	// Listen is the proxy's host:port. Required.
	Listen string `mapstructure:"listen"`
	// HoldTimeout bounds how long a new connection is held while there is
	// no usable primary (an election runs); then it is refused. Default
	// 10s.
	HoldTimeout time.Duration `mapstructure:"hold_timeout"`
	// DialTimeout bounds each connection attempt to the primary. Default
	// 2s.
	DialTimeout time.Duration `mapstructure:"dial_timeout"`
}

// ServiceAgent is services[].agent: the resource agent concord runs for
// each action of the service (start, stop, promote, demote, monitor,
// checkpoint, restore).
type ServiceAgent struct {
	// Command is the agent's executable: a path (relative paths start at
	// the working directory, not at Dir), or a bare name looked up in
	// PATH. Required. Load checks that it is an executable file, and
	// replaces it with its absolute path.
	Command string `mapstructure:"command"`
	// Args go before the action name: Command Args... ACTION.
	Args []string `mapstructure:"args"`
	// Dir is the working directory of every action; empty is concord's.
	// It must exist. Load makes it absolute.
	Dir string `mapstructure:"dir"`
	// Params are passed to the agent in its environment as
	// CONCORD_PARAM_<NAME> (and OCF_RESKEY_<name>). Names hold letters,
	// digits and '_' only, and must differ in more than case.
	Params map[string]string `mapstructure:"params"`
	// Timeouts bound each action.
	Timeouts AgentTimeouts `mapstructure:"timeouts"`
}

// AgentTimeouts is services[].agent.timeouts: how long each action may
// run before it is killed and fails. Each is positive; nil means the
// default (see AgentDefaults), and Load fills it.
type AgentTimeouts struct {
	Start      *time.Duration `mapstructure:"start"`
	Stop       *time.Duration `mapstructure:"stop"`
	Promote    *time.Duration `mapstructure:"promote"`
	Demote     *time.Duration `mapstructure:"demote"`
	Monitor    *time.Duration `mapstructure:"monitor"`
	Checkpoint *time.Duration `mapstructure:"checkpoint"`
	Restore    *time.Duration `mapstructure:"restore"`
}

// Log configures the logger that Logger builds.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `mapstructure:"level"`
	// Format is text or json. Default text.
	Format string `mapstructure:"format"`
}

// Log levels and formats.
var (
	LogLevels  = []string{"debug", "info", "warn", "error"}
	LogFormats = []string{"text", "json"}
)

// Defaults returns the values Load uses for keys that neither the file nor
// the environment set. Defaults that depend on other keys are not here:
// store.keepalive_interval (0 means session_ttl/3), store.embedded.*
// (filled only for the embedded store; name defaults to node.id),
// node.data_dir ("concord-node-" + node.id) and the keys of the items of
// services (see ServiceDefaults and AgentDefaults).
func Defaults() File {
	c := core.DefaultConfig()
	return File{
		Cluster: Cluster{Prefix: c.Prefix},
		Store: Store{
			Type:            StoreEmbedded,
			DialTimeout:     5 * time.Second,
			SessionTTL:      c.SessionTTL,
			OpTimeout:       c.OpTimeout,
			RetryMin:        c.RetryMin,
			RetryMax:        c.RetryMax,
			ElectionTimeout: c.ElectionTimeout,
		},
		Log: Log{Level: "info", Format: "text"},
	}
}

// Embedded defaults, filled by Load when store.type is embedded.
const (
	DefaultDataDir      = "concord-data"
	DefaultClientURL    = "http://127.0.0.1:2379" // https with store.embedded.client_tls
	DefaultPeerURL      = "http://127.0.0.1:2380" // https with store.embedded.peer_tls
	DefaultClusterState = "new"
	DefaultClusterToken = "concord"
)

// fillDerived sets the defaults that depend on other keys, and those of
// the items of services.
func (f *File) fillDerived() {
	f.Store.KeepaliveInterval = f.Store.effectiveKeepalive()
	if f.Store.Type == StoreEmbedded {
		f.Store.Embedded = f.Store.Embedded.withDefaults(f.Node.ID)
	}
	f.Node.DataDir = f.nodeDataDir()
	for i := range f.Services {
		f.Services[i] = f.Services[i].withDefaults()
	}
}

// nodeDataDir is node.data_dir, or its default.
func (f *File) nodeDataDir() string {
	if f.Node.DataDir == "" && f.Node.ID != "" {
		return DefaultNodeDataDirPrefix + f.Node.ID
	}
	return f.Node.DataDir
}

// advertise is the address peers reach this node's API at: node.address,
// else node.api.listen.
func (f *File) advertise() string {
	if f.Node.Address != "" {
		return f.Node.Address
	}
	return f.Node.API.Listen
}

func setIfEmpty(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

// CoreConfig returns the node configuration for core.Start: the fields the
// file sets (Address is node.address, else node.api.listen), and core.DefaultConfig for the rest (MaxInflight, Clock,
// Logger, OnElection), which the caller may still change.
func (f *File) CoreConfig() core.Config {
	c := core.DefaultConfig()
	c.NodeID = f.Node.ID
	c.Address = f.advertise()
	c.Prefix = f.Cluster.Prefix
	c.Services = make([]core.ServiceConfig, len(f.Services))
	for i, s := range f.Services {
		c.Services[i] = core.ServiceConfig{Name: s.Name, Priority: s.Priority, DependsOn: s.DependsOn}
	}
	c.SessionTTL = f.Store.SessionTTL
	c.OpTimeout = f.Store.OpTimeout
	c.RetryMin = f.Store.RetryMin
	c.RetryMax = f.Store.RetryMax
	c.ElectionTimeout = f.Store.ElectionTimeout
	return c
}
