package config

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/core"
)

func TestCoreConfig(t *testing.T) {
	f, _, err := loadYAML(t, `
node: {id: n1, address: "10.0.0.1:7000"}
cluster: {prefix: x/}
store:
  session_ttl: 30s
  op_timeout: 5s
  retry_min: 10ms
  retry_max: 1s
  election_timeout: 40s
services:
  - {name: db, priority: 10}
  - {name: cache}
`)
	if err != nil {
		t.Fatal(err)
	}
	got := f.CoreConfig()
	want := core.DefaultConfig()
	want.NodeID, want.Address, want.Prefix = "n1", "10.0.0.1:7000", "x/"
	want.Services = []core.ServiceConfig{{Name: "db", Priority: 10}, {Name: "cache"}}
	want.SessionTTL, want.OpTimeout = 30*time.Second, 5*time.Second
	want.RetryMin, want.RetryMax, want.ElectionTimeout = 10*time.Millisecond, time.Second, 40*time.Second
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Error(err)
	}
}

// TestDefaultsMatchCore keeps the file's defaults equal to core's.
func TestDefaultsMatchCore(t *testing.T) {
	d, c := Defaults(), core.DefaultConfig()
	if d.Cluster.Prefix != c.Prefix || d.Store.SessionTTL != c.SessionTTL || d.Store.OpTimeout != c.OpTimeout ||
		d.Store.RetryMin != c.RetryMin || d.Store.RetryMax != c.RetryMax || d.Store.ElectionTimeout != c.ElectionTimeout {
		t.Errorf("Defaults() %+v disagrees with core.DefaultConfig() %+v", d, c)
	}
}

func TestValidateBuiltInCode(t *testing.T) {
	f := Defaults()
	f.Node.ID = "a"
	f.Services = []Service{{Name: "db"}}
	if err := f.Validate(); err != nil {
		t.Fatalf("Defaults() plus a node and a service: %v", err)
	}
	f.Store.SessionTTL = 0
	f.Services = append(f.Services, Service{Name: "db"})
	err := f.Validate()
	wantErr(t, err, "config: store.session_ttl: is 0s", `config: services[1].name: "db" is already listed`)
}

func TestLogger(t *testing.T) {
	var buf bytes.Buffer
	f := Defaults()
	f.Log = Log{Level: "warn", Format: "json"}
	log := f.Logger(&buf)
	log.Info("hidden")
	log.Warn("shown", "k", 1)
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("not one JSON record: %q: %v", buf.String(), err)
	}
	if rec["msg"] != "shown" || rec["level"] != "WARN" {
		t.Errorf("record %v", rec)
	}

	buf.Reset()
	f.Log = Log{Level: "debug", Format: "text"}
	f.Logger(&buf).Debug("hello")
	if !strings.Contains(buf.String(), "level=DEBUG msg=hello") {
		t.Errorf("text output %q", buf.String())
	}
}

func TestWarnings(t *testing.T) {
	cases := []struct {
		name, store, want string
	}{
		{"op timeout over a third", "  op_timeout: 5s\n",
			"FILE:4: store.op_timeout: 5s is more than a third of store.session_ttl 10s"},
		{"keepalive over a third", "  keepalive_interval: 4s\n",
			"FILE:4: store.keepalive_interval: 4s is more than a third of store.session_ttl 10s"},
		{"consul ttl below its default minimum", "  type: consul\n  endpoints: [a:1]\n  session_ttl: 6s\n  op_timeout: 2s\n",
			"FILE:6: store.session_ttl: 6s is below 10s, the shortest session TTL Consul accepts by default; it works only if the Consul servers' session_ttl_min is 6s or less"},
		{"memory", "  type: memory\n",
			"FILE:4: store.type: memory keeps the store inside this process"},
		{"insecure", "  type: consul\n  endpoints: [a:1]\n  tls: {insecure_skip_verify: true}\n",
			"FILE:6: store.tls.insecure_skip_verify: is true: the store's certificate is not checked"},
		{"loopback peer", "  embedded:\n    initial_cluster: node-a=http://127.0.0.1:2380,node-b=http://10.0.0.2:2380\n",
			"store.embedded.peer_url: http://127.0.0.1:2380 is a loopback address"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, p, err := loadYAML(t, "node:\n  id: node-a\nstore:\n"+tc.store+"services: [{name: db}]\n")
			if err != nil {
				t.Fatal(err)
			}
			w := strings.Join(f.Warnings(), "\n")
			if want := strings.ReplaceAll(tc.want, "FILE", p); !strings.Contains(w, want) {
				t.Errorf("warnings lack %q:\n%s", want, w)
			}
		})
	}
}

func TestSecretValues(t *testing.T) {
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte("  s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if v, err := (Auth{TokenFile: p}).TokenValue(); err != nil || v != "s3cret" {
		t.Errorf("TokenValue = %q, %v", v, err)
	}
	if v, err := (Auth{Password: "pw"}).PasswordValue(); err != nil || v != "pw" {
		t.Errorf("PasswordValue = %q, %v", v, err)
	}
	if _, err := (Auth{PasswordFile: p + ".missing"}).PasswordValue(); err == nil {
		t.Error("PasswordValue of a missing file: no error")
	}
}

// TestExamples loads every file in configs/: each must be valid, draw no
// warnings but those expected, and be free of absolute paths. They load
// in a directory set up as their comments say: the kvstore examples need
// ./kvstore and cluster.secret there.
func TestExamples(t *testing.T) {
	// The embedded cluster shows peer_tls commented out: its files cannot
	// exist here. Without it, the plaintext peer traffic draws a warning;
	// so does that of the kvstore nodes, on loopback.
	expected := map[string]string{
		"embedded-cluster.yaml": "store.embedded.peer_url: http://10.0.0.1:2380 is not https, so the traffic between the members of store.embedded.initial_cluster is unencrypted and unauthenticated",
		"kvstore-node-a.yaml":   "store.embedded.peer_url: http://127.0.0.1:2380 is not https",
		"kvstore-node-b.yaml":   "store.embedded.peer_url: http://127.0.0.1:22380 is not https",
		"kvstore-node-c.yaml":   "store.embedded.peer_url: http://127.0.0.1:32380 is not https",
	}
	files, err := filepath.Glob("../../configs/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		if files[i], err = filepath.Abs(f); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	writeExecutable(t, filepath.Join(dir, "kvstore"))
	if err := os.WriteFile(filepath.Join(dir, "cluster.secret"), []byte("c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0IHNlY3I=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	for _, want := range []string{"local.yaml", "embedded-cluster.yaml", "etcd.yaml", "consul.yaml", "zookeeper.yaml",
		"kvstore-node-a.yaml", "kvstore-node-b.yaml", "kvstore-node-c.yaml"} {
		found := false
		for _, f := range files {
			found = found || filepath.Base(f) == want
		}
		if !found {
			t.Errorf("configs/%s is missing", want)
		}
	}
	for _, p := range files {
		t.Run(filepath.Base(p), func(t *testing.T) {
			f, err := LoadEnv(p, nil)
			if err != nil {
				t.Fatal(err)
			}
			w := f.Warnings()
			if want, ok := expected[filepath.Base(p)]; ok {
				if len(w) != 1 || !strings.Contains(w[0], want) {
					t.Errorf("warnings: %q; want only one containing %q", w, want)
				}
			} else if len(w) > 0 {
				t.Errorf("warnings: %q", w)
			}
			raw, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			for i, line := range strings.Split(string(raw), "\n") {
				if strings.Contains(line, "/home/") || strings.Contains(line, "/work/") || strings.Contains(line, "/tmp/") {
					t.Errorf("line %d names a path of this machine: %s", i+1, line)
				}
			}
		})
	}
}

// TestDocs keeps docs/configuration.md covering every key, its variable
// and every store type.
func TestDocs(t *testing.T) {
	raw, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	want := []string{"`services`", "`services[].name`", "`services[].priority`", ServicesEnv}
	for _, k := range serviceKeys() {
		want = append(want, "`services[]."+k+"`")
	}
	for _, l := range leaves {
		want = append(want, "`"+l.path+"`", l.env)
	}
	for _, typ := range StoreTypes {
		want = append(want, "`"+typ+"`")
	}
	for _, w := range want {
		if !strings.Contains(doc, w) {
			t.Errorf("docs/configuration.md does not mention %s", w)
		}
	}
}
