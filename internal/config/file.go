package config

import (
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
	Log      Log       `mapstructure:"log"`

	// src says where values came from, for error messages. Zero for a
	// File built in code.
	src sources
}

// Node identifies this concord node.
type Node struct {
	// ID is this node's unique, stable ID (core.ValidateName rules).
	// Required.
	ID string `mapstructure:"id"`
	// Address is published in the member record for clients and peers.
	// Optional and free-form, e.g. 10.0.0.1:7000.
	Address string `mapstructure:"address"`
}

// Cluster holds what all nodes of one cluster share.
type Cluster struct {
	// Prefix is the key root of the cluster in the store; it must end
	// with "/". Default "concord/".
	Prefix string `mapstructure:"prefix"`
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

// Service is one service this node provides.
type Service struct {
	// Name is unique in the cluster (core.ValidateName rules).
	Name string `mapstructure:"name"`
	// Priority breaks ties among equally ranked providers: higher wins.
	// Default 0.
	Priority int `mapstructure:"priority"`
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
// store.keepalive_interval (0 means session_ttl/3) and store.embedded.*
// (filled only for the embedded store; name defaults to node.id).
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

// fillDerived sets the defaults that depend on other keys.
func (f *File) fillDerived() {
	f.Store.KeepaliveInterval = f.Store.effectiveKeepalive()
	if f.Store.Type == StoreEmbedded {
		f.Store.Embedded = f.Store.Embedded.withDefaults(f.Node.ID)
	}
}

func setIfEmpty(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

// CoreConfig returns the node configuration for core.Start: the fields the
// file sets, and core.DefaultConfig for the rest (MaxInflight, Clock,
// Logger, OnElection), which the caller may still change.
func (f *File) CoreConfig() core.Config {
	c := core.DefaultConfig()
	c.NodeID = f.Node.ID
	c.Address = f.Node.Address
	c.Prefix = f.Cluster.Prefix
	c.Services = make([]core.ServiceConfig, len(f.Services))
	for i, s := range f.Services {
		c.Services[i] = core.ServiceConfig{Name: s.Name, Priority: s.Priority}
	}
	c.SessionTTL = f.Store.SessionTTL
	c.OpTimeout = f.Store.OpTimeout
	c.RetryMin = f.Store.RetryMin
	c.RetryMax = f.Store.RetryMax
	c.ElectionTimeout = f.Store.ElectionTimeout
	return c
}
