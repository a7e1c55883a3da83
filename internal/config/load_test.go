package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoadMinimalFillsDefaults(t *testing.T) {
	f, p, err := loadYAML(t, minimal)
	if err != nil {
		t.Fatal(err)
	}
	want := Defaults()
	want.Path = p
	want.Node.ID = "node-a"
	want.Node.DataDir = "concord-node-node-a"
	want.Services = []Service{filled(Service{Name: "db"})}
	want.Store.KeepaliveInterval = 10 * time.Second / 3
	want.Store.Embedded = Embedded{
		DataDir:        "concord-data",
		Name:           "node-a",
		ClientURL:      "http://127.0.0.1:2379",
		PeerURL:        "http://127.0.0.1:2380",
		InitialCluster: "node-a=http://127.0.0.1:2380",
		ClusterState:   "new",
		ClusterToken:   "concord",
	}
	want.src = f.src
	if !reflect.DeepEqual(*f, want) {
		t.Errorf("got  %+v\nwant %+v", *f, want)
	}
	if w := f.Warnings(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
}

func TestLoadEveryKey(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"ca.pem", "cert.pem", "key.pem", "pw"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	content := `
node:
  id: n1
  address: 10.0.0.1:7000
cluster:
  prefix: prod/ha/
store:
  type: etcd
  endpoints: [https://10.0.0.1:2379, 10.0.0.2:2379]
  dial_timeout: 2s
  session_ttl: 15s
  keepalive_interval: 4s
  op_timeout: 4s
  retry_min: 100ms
  retry_max: 5s
  election_timeout: 30s
  max_txn_ops: 64
  tls:
    ca_file: DIR/ca.pem
    cert_file: DIR/cert.pem
    key_file: DIR/key.pem
    server_name: etcd.internal
  auth:
    username: concord
    password_file: DIR/pw
services:
  - name: db
    priority: 10
  - name: cache
    priority: -1
log:
  level: debug
  format: json
`
	f, _, err := loadYAML(t, strings.ReplaceAll(content, "DIR", dir))
	if err != nil {
		t.Fatal(err)
	}
	want := File{
		Path:    f.Path,
		Node:    Node{ID: "n1", Address: "10.0.0.1:7000", DataDir: "concord-node-n1"},
		Cluster: Cluster{Prefix: "prod/ha/"},
		Store: Store{
			Type:              "etcd",
			Endpoints:         []string{"https://10.0.0.1:2379", "10.0.0.2:2379"},
			DialTimeout:       2 * time.Second,
			SessionTTL:        15 * time.Second,
			KeepaliveInterval: 4 * time.Second,
			OpTimeout:         4 * time.Second,
			RetryMin:          100 * time.Millisecond,
			RetryMax:          5 * time.Second,
			ElectionTimeout:   30 * time.Second,
			MaxTxnOps:         64,
			TLS: TLS{
				CAFile:     filepath.Join(dir, "ca.pem"),
				CertFile:   filepath.Join(dir, "cert.pem"),
				KeyFile:    filepath.Join(dir, "key.pem"),
				ServerName: "etcd.internal",
			},
			Auth: Auth{Username: "concord", PasswordFile: filepath.Join(dir, "pw")},
		},
		Services: []Service{filled(Service{Name: "db", Priority: 10}), filled(Service{Name: "cache", Priority: -1})},
		Log:      Log{Level: "debug", Format: "json"},
		src:      f.src,
	}
	if !reflect.DeepEqual(*f, want) {
		t.Errorf("got  %+v\nwant %+v", *f, want)
	}
	if pw, err := f.Store.Auth.PasswordValue(); err != nil || pw != "x" {
		t.Errorf("PasswordValue = %q, %v; want x", pw, err)
	}
	if !f.Store.TLS.Enabled() {
		t.Error("TLS.Enabled() = false")
	}
}

func TestLoadYAMLFeatures(t *testing.T) {
	// Anchors, merge keys, quoted values and an explicit 0 keepalive.
	f, _, err := loadYAML(t, `
timings: &t
  session_ttl: 12s
  op_timeout: 2s
node: {id: "n1"}
store:
  <<: *t
  keepalive_interval: 0
services: [{name: db}]
`)
	if err == nil || !strings.Contains(err.Error(), "timings: unknown key") {
		t.Fatalf("want an unknown-key error for the anchor's own key, got %v", err)
	}
	f, _, err = loadYAML(t, `
node: {id: "n1"}
store: &s
  <<: {session_ttl: 12s, op_timeout: 2s}
  keepalive_interval: 0
services: [{name: db}]
`)
	if err != nil {
		t.Fatal(err)
	}
	if f.Store.SessionTTL != 12*time.Second || f.Store.KeepaliveInterval != 4*time.Second {
		t.Errorf("session_ttl %v, keepalive %v; want 12s, 4s", f.Store.SessionTTL, f.Store.KeepaliveInterval)
	}
}

func TestLoadEmptySections(t *testing.T) {
	f, _, err := loadYAML(t, "node:\n  id: a\ncluster:\nstore:\n  tls:\n  auth: {}\nservices:\n  - name: db\nlog:\n")
	if err != nil {
		t.Fatal(err)
	}
	if f.Store.SessionTTL != 10*time.Second || f.Cluster.Prefix != "concord/" || f.Log.Level != "info" {
		t.Errorf("defaults not filled under empty sections: %+v", f)
	}
}

func TestLoadFileErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope.yaml")
	_, err := LoadEnv(missing, nil)
	wantErr(t, err, missing+": no such file; check the path")

	_, err = LoadEnv("", nil)
	wantErr(t, err, "config: no file given")

	_, err = LoadEnv(dir, nil)
	wantErr(t, err, dir+": is a directory; give the path of a YAML file")

	if os.Geteuid() == 0 {
		t.Log("running as root: skipping the unreadable-file case")
	} else {
		p := writeFile(t, "locked.yaml", minimal)
		if err := os.Chmod(p, 0); err != nil {
			t.Fatal(err)
		}
		_, err = LoadEnv(p, nil)
		wantErr(t, err, p+": permission denied; make the file readable")
	}
}

// TestLoadBadInput checks each kind of mistake and that its message names
// the source (FILE is the file's path), the key and the fix.
func TestLoadBadInput(t *testing.T) {
	valid := func(store string) string {
		return "node:\n  id: node-a\nstore:\n" + store + "services:\n  - name: db\n"
	}
	cases := []struct {
		name    string
		content string
		env     []string
		want    []string
		notWant []string
	}{
		// Syntax.
		{name: "bad indentation", content: "node:\n  id: a\n store: x\n",
			want: []string{"FILE:2: not valid YAML: did not find expected key; check the indentation"}},
		{name: "tab", content: "node:\n\tid: a\n",
			want: []string{"FILE:2: not valid YAML: found character that cannot start any token"}},
		{name: "top level list", content: "- node\n- store\n",
			want: []string{"FILE:1: the file is a list, not a section of keys; start with keys such as node:"}},
		{name: "duplicate key", content: "node:\n  id: a\n  id: b\nservices: [{name: db}]\n",
			want: []string{"FILE:3: node.id: given twice (also on line 2); keep one"}},

		// Unknown keys.
		{name: "misspelt key", content: valid("  sesion_ttl: 10s\n"),
			want: []string{"FILE:4: store.sesion_ttl: unknown key; did you mean store.session_ttl?"}},
		{name: "key in wrong section", content: minimal + "session_ttl: 10s\n",
			want: []string{"session_ttl: unknown key; did you mean store.session_ttl?"}},
		{name: "key far from any", content: valid("  flavour: vanilla\n"),
			want: []string{"FILE:4: store.flavour: unknown key; store takes type, endpoints, dial_timeout"}},
		{name: "unknown key in a list item", content: "node: {id: a}\nservices:\n  - name: db\n    prio: 1\n",
			want: []string{"FILE:4: services[0].prio: unknown key; did you mean services[0].priority?"}},
		{name: "upper case key", content: "Node:\n  id: a\nservices: [{name: db}]\n",
			want: []string{"FILE:1: Node: unknown key; did you mean node?"}},
		{name: "unknown nested key", content: valid("  tls:\n    ca: x\n"),
			want: []string{"FILE:5: store.tls.ca: unknown key; did you mean store.tls.ca_file?"}},

		// Wrong types.
		{name: "duration as word", content: valid("  session_ttl: ten\n"),
			want: []string{`FILE:4: store.session_ttl: "ten" is not a duration; write e.g. 10s`}},
		{name: "duration without unit", content: valid("  op_timeout: 3\n"),
			want: []string{"FILE:4: store.op_timeout: 3 has no unit; write e.g. 3s or 3ms"}},
		{name: "list for a string", content: "node:\n  id: [a, b]\nservices: [{name: db}]\n",
			want: []string{"FILE:2: node.id: a list is not a string; write a single value"}},
		{name: "number for a string", content: "node:\n  id: 7\nservices: [{name: db}]\n",
			want: []string{`FILE:2: node.id: 7 is not a string; quote it: "7"`}},
		{name: "word for priority", content: "node: {id: a}\nservices:\n  - name: db\n    priority: high\n",
			want: []string{`FILE:4: services[0].priority: "high" is not a whole number; write e.g. 10`}},
		{name: "fraction for priority", content: "node: {id: a}\nservices:\n  - {name: db, priority: 1.5}\n",
			want: []string{"FILE:3: services[0].priority: 1.5 is not a whole number"}},
		{name: "word for bool", content: valid("  tls:\n    insecure_skip_verify: yes\n"),
			want: []string{`FILE:5: store.tls.insecure_skip_verify: "yes" is not true or false; write true or false`}},
		{name: "string for list", content: valid("  type: etcd\n  endpoints: 10.0.0.1:2379\n"),
			want: []string{`FILE:5: store.endpoints: "10.0.0.1:2379" is a single string, not a list; write [10.0.0.1:2379]`}},
		{name: "scalar for section", content: "node: {id: a}\nstore: etcd\nservices: [{name: db}]\n",
			want: []string{`FILE:2: store: "etcd" is not a section; write the keys of store on the lines below it, indented`}},
		{name: "scalar for a service", content: "node: {id: a}\nservices: [db, cache]\n",
			want: []string{`FILE:2: services[0]: "db" is not a section; write the item as keys, e.g. - name: db`, `FILE:2: services[1]: "cache" is not a section`}},
		{name: "scalar for services", content: "node: {id: a}\nservices: db\n",
			want: []string{`FILE:2: services: "db" is not a list; write one "- name: ..." item per entry`}},
		{name: "secret not shown", content: valid("  type: etcd\n  endpoints: [a:1]\n  auth:\n    username: u\n    password: 123456\n"),
			want:    []string{"FILE:8: store.auth.password: the value (a number) is not a string; quote it"},
			notWant: []string{"123456"}},
		{name: "all type errors at once", content: "node:\n  id: [a]\nstore:\n  session_ttl: x\n  max_txn_ops: many\nservices: [{name: db}]\n",
			want: []string{"FILE:2: node.id:", "FILE:4: store.session_ttl:", "FILE:5: store.max_txn_ops:"}},

		// Missing required keys.
		{name: "empty file", content: "",
			want: []string{"FILE: node.id: missing; give a name such as node-a", "FILE: services: none listed; list the services this node provides"}},
		{name: "no services", content: "node: {id: a}\nservices: []\n",
			want: []string{"FILE:2: services: none listed"}},
		{name: "etcd without endpoints", content: valid("  type: etcd\n"),
			want: []string{"FILE:3: store.endpoints: missing; the etcd store needs the addresses of its servers, e.g. endpoints: [10.0.0.1:2379"}},
		{name: "consul without endpoints", content: valid("  type: consul\n"),
			want: []string{"store.endpoints: missing; the consul store needs", "10.0.0.1:8500"}},
		{name: "zookeeper without endpoints", content: valid("  type: zookeeper\n"),
			want: []string{"store.endpoints: missing; the zookeeper store needs", "10.0.0.1:2181"}},
		{name: "service without name", content: "node: {id: a}\nservices:\n  - priority: 3\n",
			want: []string{"FILE:3: services[0].name: missing; give a name such as db"}},

		// Timings.
		{name: "keepalive at half the ttl", content: valid("  session_ttl: 10s\n  keepalive_interval: 5s\n"),
			want: []string{"FILE:5: store.keepalive_interval: 5s is not below half of store.session_ttl 10s", "set keepalive_interval to 0 (session_ttl/3 = 3.333s) or below 5s, or raise session_ttl to 15s or more"}},
		{name: "ttl shorter than keepalive", content: valid("  session_ttl: 4s\n  keepalive_interval: 5s\n  op_timeout: 1s\n"),
			want: []string{"FILE:4: store.session_ttl: 4s is not longer than store.keepalive_interval 5s: the TTL is shorter than the renew interval", "set keepalive_interval to 0 (session_ttl/3 = 1.333s), or raise session_ttl to 15s or more"}},
		{name: "op timeout outlasts ttl", content: valid("  session_ttl: 3s\n"),
			want: []string{"FILE:3: store.op_timeout: 3s is not shorter than store.session_ttl 3s: a store call could outlast the session; set op_timeout to at most 1s"}},
		{name: "retry min above max", content: valid("  retry_min: 3s\n"),
			want: []string{"FILE:4: store.retry_min: 3s is above store.retry_max 2s; make retry_min at most retry_max"}},
		{name: "zero ttl", content: valid("  session_ttl: 0s\n"),
			want: []string{"FILE:4: store.session_ttl: is 0s; it must be positive, e.g. 10s (the default)"}},
		{name: "negative durations", content: valid("  dial_timeout: -1s\n  keepalive_interval: -1s\n  election_timeout: 0\n  max_txn_ops: -2\n"),
			want: []string{
				"FILE:4: store.dial_timeout: is -1s; it must be positive, e.g. 5s",
				"FILE:5: store.keepalive_interval: is -1s; use 0 for store.session_ttl/3",
				"FILE:6: store.election_timeout: is 0s; it must be positive, e.g. 20s",
				"FILE:7: store.max_txn_ops: is -2; use 0 for the store's default",
			}},

		{name: "etcd transactions too small", content: valid("  max_txn_ops: 8\n"),
			want: []string{"FILE:4: store.max_txn_ops: is 8, but etcd transactions need more than 8"}},
		{name: "keepalive below a millisecond", content: valid("  keepalive_interval: 500us\n"),
			want: []string{"FILE:4: store.keepalive_interval: is 500µs, below 1ms"}},

		{name: "consul prefix with leading slash", content: valid("  type: consul\n  endpoints: [a:1]\n") + "cluster:\n  prefix: /prod/\n",
			want: []string{`cluster.prefix: "/prod/" starts with "/", which Consul keys cannot; write "prod/"`}},

		// Enumerations.
		{name: "store type", content: valid("  type: etdc\n"),
			want: []string{`FILE:4: store.type: "etdc" is not valid; use one of embedded, etcd, consul, zookeeper, memory (did you mean etcd?)`}},
		{name: "log level and format", content: minimal + "log:\n  level: verbose\n  format: jsn\n",
			want: []string{`FILE:7: log.level: "verbose" is not valid; use one of debug, info, warn, error`, `FILE:8: log.format: "jsn" is not valid; use one of text, json (did you mean json?)`}},
		{name: "cluster state", content: valid("  embedded:\n    cluster_state: old\n"),
			want: []string{`FILE:5: store.embedded.cluster_state: "old" is not valid; use one of new, existing`}},

		// Names.
		{name: "duplicate service", content: "node: {id: a}\nservices:\n  - name: db\n  - name: web\n  - name: db\n",
			want: []string{`FILE:5: services[2].name: "db" is already listed as services[0]; list each service once`}},
		{name: "bad service name", content: "node: {id: a}\nservices:\n  - name: a/b\n",
			want: []string{`FILE:3: services[0].name: "a/b" contains '/': use only letters`}},
		{name: "bad node id", content: "node:\n  id: .hidden\nservices: [{name: db}]\n",
			want: []string{`FILE:2: node.id: ".hidden" starts with '.'`}},
		{name: "empty prefix", content: minimal + "cluster:\n  prefix: \"\"\n",
			want: []string{`FILE:7: cluster.prefix: is empty; write a key root ending in "/", e.g. concord/`}},
		{name: "address with space", content: "node:\n  id: a\n  address: 10.0.0.1 7000\nservices: [{name: db}]\n",
			want: []string{`FILE:3: node.address: "10.0.0.1 7000" contains white space; write host:port`}},
		{name: "prefix without slash", content: minimal + "cluster:\n  prefix: prod\n",
			want: []string{`FILE:7: cluster.prefix: "prod" does not end with "/"; write "prod/"`}},

		// Embedded cluster.
		{name: "initial cluster malformed", content: valid("  embedded:\n    initial_cluster: node-a=http://127.0.0.1:2380,node-b\n"),
			want: []string{`FILE:5: store.embedded.initial_cluster: "node-b" is not name=peer_url; write name=peer_url items`}},
		{name: "initial cluster without this member", content: valid("  embedded:\n    peer_url: http://10.0.0.1:2380\n    initial_cluster: node-b=http://10.0.0.2:2380,node-c=http://10.0.0.3:2380\n"),
			want: []string{"FILE:6: store.embedded.initial_cluster: does not list this member; add node-a=http://10.0.0.1:2380"}},
		{name: "initial cluster with another url", content: valid("  embedded:\n    peer_url: http://10.0.0.1:2380\n    initial_cluster: node-a=http://10.0.0.9:2380\n"),
			want: []string{"store.embedded.initial_cluster: lists node-a at http://10.0.0.9:2380, but store.embedded.peer_url is http://10.0.0.1:2380; make them the same"}},
		{name: "initial cluster bad url", content: valid("  embedded:\n    initial_cluster: node-a=10.0.0.1:2380\n"),
			want: []string{`store.embedded.initial_cluster: member node-a: "10.0.0.1:2380"`}},
		{name: "existing cluster alone", content: valid("  embedded:\n    cluster_state: existing\n"),
			want: []string{"FILE:5: store.embedded.cluster_state: is existing, which joins a running cluster, but store.embedded.initial_cluster lists no other member"}},
		{name: "embedded https", content: valid("  embedded:\n    client_url: https://127.0.0.1:2379\n"),
			want: []string{`FILE:5: store.embedded.client_url: "https://127.0.0.1:2379" uses https, but store.embedded.client_tls is not set; set store.embedded.client_tls (cert_file and key_file at least) to serve TLS, or write http://`}},
		{name: "embedded same urls", content: valid("  embedded:\n    client_url: http://127.0.0.1:2380\n"),
			want: []string{"store.embedded.peer_url: is the same as store.embedded.client_url"}},
		{name: "embedded url without port", content: valid("  embedded:\n    peer_url: http://10.0.0.1\n"),
			want: []string{`FILE:5: store.embedded.peer_url: "http://10.0.0.1" has no host and port; write e.g. http://127.0.0.1:2380`}},

		// Keys of another store type.
		{name: "digest with etcd", content: valid("  type: etcd\n  endpoints: [a:1]\n  auth:\n    digest: u:p\n"),
			want: []string{"FILE:7: store.auth.digest: is set, but only the zookeeper store uses it and store.type is etcd; remove it, or fix store.type"}},
		{name: "embedded keys with etcd", content: valid("  type: etcd\n  endpoints: [a:1]\n  embedded:\n    data_dir: x\n"),
			want: []string{"FILE:7: store.embedded.data_dir: is set, but only the embedded store uses it and store.type is etcd"}},
		{name: "endpoints with embedded", content: valid("  endpoints: [a:1]\n"),
			want: []string{"FILE:4: store.endpoints: is set, but only the etcd, consul and zookeeper stores use it and store.type is embedded"}},
		{name: "token with zookeeper", content: valid("  type: zookeeper\n  endpoints: [zk1]\n  auth: {token: secret}\n"),
			want:    []string{"FILE:6: store.auth.token: is set, but only the consul store uses it"},
			notWant: []string{"secret"}},

		// TLS and credentials.
		{name: "tls file missing", content: valid("  type: etcd\n  endpoints: [a:1]\n  tls:\n    ca_file: certs/nope.pem\n"),
			want: []string{`FILE:7: store.tls.ca_file: "certs/nope.pem" does not exist; give the path of a readable file (relative paths start at the working directory)`}},
		{name: "tls cert without key", content: valid("  type: etcd\n  endpoints: [a:1]\n  tls:\n    cert_file: CERT\n"),
			want: []string{"FILE:7: store.tls.cert_file: is set but store.tls.key_file is not; a client certificate needs its key: set both or neither"}},
		{name: "tls key without cert", content: valid("  type: consul\n  endpoints: [a:1]\n  tls:\n    key_file: CERT\n"),
			want: []string{"FILE:7: store.tls.key_file: is set but store.tls.cert_file is not"}},
		{name: "tls file is a directory", content: valid("  type: etcd\n  endpoints: [a:1]\n  tls:\n    ca_file: DIR\n"),
			want: []string{"store.tls.ca_file:", "is a directory"}},
		{name: "tls insecure with ca", content: valid("  type: etcd\n  endpoints: [a:1]\n  tls:\n    ca_file: CERT\n    insecure_skip_verify: true\n"),
			want: []string{"FILE:8: store.tls.insecure_skip_verify: is true, which ignores store.tls.ca_file; remove one of them"}},
		{name: "password twice", content: valid("  type: etcd\n  endpoints: [a:1]\n  auth:\n    username: u\n    password: p\n    password_file: CERT\n"),
			want: []string{"FILE:8: store.auth.password: is set and so is store.auth.password_file; give the password one way only"}},
		{name: "password without user", content: valid("  type: etcd\n  endpoints: [a:1]\n  auth:\n    password_file: nope\n"),
			want: []string{"FILE:6: store.auth.username: missing; a password needs the etcd user", `FILE:7: store.auth.password_file: "nope" does not exist`}},
		{name: "token twice", content: valid("  type: consul\n  endpoints: [a:1]\n  auth:\n    token: t\n    token_file: CERT\n"),
			want: []string{"FILE:7: store.auth.token: is set and so is store.auth.token_file"}},
		{name: "bad digest", content: valid("  type: zookeeper\n  endpoints: [a:1]\n  auth:\n    digest: justauser\n"),
			want: []string{"FILE:7: store.auth.digest: is not user:password; write it as user:password"}, notWant: []string{"justauser"}},

		// Endpoints.
		{name: "endpoint without port", content: valid("  type: etcd\n  endpoints: [10.0.0.1]\n"),
			want: []string{`FILE:5: store.endpoints[0]: "10.0.0.1" is not host:port; write host:port as in [10.0.0.1:2379`}},
		{name: "zookeeper endpoint with scheme", content: valid("  type: zookeeper\n  endpoints: [http://zk:2181]\n"),
			want: []string{"store.endpoints[0]: \"http://zk:2181\" has a URL scheme, which zookeeper endpoints do not take"}},
		{name: "endpoint twice", content: valid("  type: etcd\n  endpoints: [a:1, a:1]\n"),
			want: []string{`store.endpoints[1]: "a:1" is listed twice`}},
		{name: "endpoint bad port", content: valid("  type: consul\n  endpoints: [\"http://c:99999\"]\n"),
			want: []string{`store.endpoints[0]: "http://c:99999" has no valid port`}},

		// Environment overrides name the variable, not the file.
		{name: "env duration", content: minimal, env: []string{"CONCORD_STORE_SESSION_TTL=ten"},
			want:    []string{`CONCORD_STORE_SESSION_TTL: store.session_ttl: "ten" is not a duration; write e.g. 10s`},
			notWant: []string{"FILE"}},
		{name: "env duration without unit", content: minimal, env: []string{"CONCORD_STORE_OP_TIMEOUT=3"},
			want: []string{`CONCORD_STORE_OP_TIMEOUT: store.op_timeout: "3" has no unit; write e.g. 3s or 3ms`}},
		{name: "env int", content: minimal, env: []string{"CONCORD_STORE_MAX_TXN_OPS=lots"},
			want: []string{`CONCORD_STORE_MAX_TXN_OPS: store.max_txn_ops: "lots" is not a whole number`}},
		{name: "env bool", content: minimal, env: []string{"CONCORD_STORE_TLS_INSECURE_SKIP_VERIFY=maybe"},
			want: []string{`CONCORD_STORE_TLS_INSECURE_SKIP_VERIFY: store.tls.insecure_skip_verify: "maybe" is not true or false`}},
		{name: "env secret", content: minimal, env: []string{"CONCORD_STORE_TYPE=etcd", "CONCORD_STORE_ENDPOINTS=a:1", "CONCORD_STORE_AUTH_PASSWORD=hunter2"},
			want:    []string{"FILE: store.auth.username: missing"},
			notWant: []string{"hunter2"}},
		{name: "env node id", content: minimal, env: []string{"CONCORD_NODE_ID=a b"},
			want: []string{`CONCORD_NODE_ID: node.id: "a b" contains ' '`}, notWant: []string{"FILE"}},
		{name: "env timing", content: minimal, env: []string{"CONCORD_STORE_KEEPALIVE_INTERVAL=6s"},
			want: []string{"CONCORD_STORE_KEEPALIVE_INTERVAL: store.keepalive_interval: 6s is not below half of store.session_ttl 10s"}},
		{name: "env endpoints", content: valid("  type: etcd\n  endpoints: [a:1]\n"), env: []string{"CONCORD_STORE_ENDPOINTS=a:1,b"},
			want: []string{`CONCORD_STORE_ENDPOINTS: store.endpoints[1]: "b" is not host:port`}},
		{name: "env services priority", content: minimal, env: []string{"CONCORD_SERVICES=db:high"},
			want: []string{`CONCORD_SERVICES: services: item "db:high": priority "high" is not a whole number; write name or name:priority items separated by commas, e.g. db:10,cache`}},
		{name: "env services empty item", content: minimal, env: []string{"CONCORD_SERVICES=db,,web"},
			want: []string{"CONCORD_SERVICES: services: item 2 is empty"}},
		{name: "env services names", content: minimal, env: []string{"CONCORD_SERVICES=db:1,a/b,db"},
			want: []string{`CONCORD_SERVICES: services[1].name: "a/b" contains '/'`, `CONCORD_SERVICES: services[2].name: "db" is already listed as services[0]`}},
		{name: "env hides bad file value", content: valid("  session_ttl: ten\n"), env: []string{"CONCORD_STORE_SESSION_TTL=ten"},
			want: []string{"CONCORD_STORE_SESSION_TTL: store.session_ttl:"}, notWant: []string{"FILE"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cert := filepath.Join(dir, "cert.pem")
			if err := os.WriteFile(cert, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			content := strings.NewReplacer("CERT", cert, "DIR", dir).Replace(tc.content)
			f, p, err := loadYAML(t, content, tc.env...)
			if f != nil {
				t.Errorf("Load returned a File with the error")
			}
			for _, w := range tc.want {
				wantErr(t, err, strings.ReplaceAll(w, "FILE", p))
			}
			for _, nw := range tc.notWant {
				if err != nil && strings.Contains(err.Error(), strings.ReplaceAll(nw, "FILE", p)) {
					t.Errorf("error contains %q:\n%v", nw, err)
				}
			}
		})
	}
}

// TestLoadErrorsOnePerLine checks that problems are reported together,
// one per line, in file order, each starting with its source.
func TestLoadErrorsOnePerLine(t *testing.T) {
	_, p, err := loadYAML(t, `
node:
  id: a/b
store:
  session_ttl: 3s
  retry_min: 5s
log:
  level: loud
services:
  - name: db
  - name: db
`, "CONCORD_LOG_FORMAT=xml")
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	wantPrefixes := []string{
		p + ":3: node.id:",
		p + ":4: store.op_timeout: 3s is not shorter than store.session_ttl 3s", // the default
		p + ":6: store.retry_min:",
		p + ":8: log.level:",
		p + ":11: services[1].name:",
		"CONCORD_LOG_FORMAT: log.format:",
	}
	if len(lines) != len(wantPrefixes) {
		t.Fatalf("got %d errors, want %d:\n%v", len(lines), len(wantPrefixes), err)
	}
	for i, w := range wantPrefixes {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("error %d = %q; want prefix %q", i, lines[i], w)
		}
	}
}
