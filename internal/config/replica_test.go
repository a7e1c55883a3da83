package config

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/testpki"
)

// replicaDir sets up a directory with what the replica keys point at, and
// returns a replacer of the placeholders the tests write in their files:
// DIR (the directory), AGENT (an executable script), NOEXEC (a file that
// is not executable), SECRET (a good secret file, "  " + goodSecret +
// "\n"), SHORT (a secret file of 11 bytes, shortSecret), and the TLS files
// @CA@, @CERT@, @KEY@ (server and client authentication, naming
// 127.0.0.1), @SONLY@ and @SONLYKEY@ (server authentication only) and
// @OTHERCA@ (another CA).
func replicaDir(t *testing.T) *strings.Replacer {
	t.Helper()
	dir := t.TempDir()
	writeExecutable(t, filepath.Join(dir, "agent"))
	for name, content := range map[string]string{
		"noexec": "#!/bin/sh\n",
		"secret": "  " + goodSecret + "\n",
		"short":  shortSecret + "\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, sub := range []string{"pki", "other"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	pki := testpki.New(t, filepath.Join(dir, "pki"))
	other := testpki.New(t, filepath.Join(dir, "other"))
	return strings.NewReplacer(
		"@OTHERCA@", other.CAFile, "@SONLYKEY@", pki.ServerOnlyKey, "@SONLY@", pki.ServerOnlyCert,
		"@CA@", pki.CAFile, "@CERT@", pki.ServerCert, "@KEY@", pki.ServerKey,
		"AGENT", filepath.Join(dir, "agent"), "NOEXEC", filepath.Join(dir, "noexec"),
		"SECRET", filepath.Join(dir, "secret"), "SHORT", filepath.Join(dir, "short"),
		"DIR", dir,
	)
}

const (
	goodSecret  = "0123456789abcdef-the-cluster-secret"
	shortSecret = "sh0rtS3cret"
)

// apiYAML is a valid file with an API and one service with an agent,
// whose lines are those of the placeholders: NODE (extra node keys, from
// line 4), CLUSTER (extra cluster keys), SVC (extra keys of the kv
// service) and AGENTKEYS (extra agent keys).
const apiYAML = `node:
  id: node-a
  api: {listen: 127.0.0.1:7101}
NODEcluster:
  secret_file: SECRET
CLUSTERservices:
  - name: kv
SVC    agent:
      command: AGENT
AGENTKEYS`

// apiFile fills apiYAML's placeholders.
func apiFile(node, cluster, svc, agentKeys string) string {
	return strings.NewReplacer("NODE", node, "CLUSTER", cluster, "SVC", svc, "AGENTKEYS", agentKeys).Replace(apiYAML)
}

// TestLoadReplicaKeys loads a file that sets every new key, and checks
// the File and ReplicaConfig.
func TestLoadReplicaKeys(t *testing.T) {
	repl := replicaDir(t)
	content := repl.Replace(`
node:
  id: node-a
  address: 127.0.0.1:7201
  data_dir: DIR/state
  api:
    listen: 127.0.0.1:7101
    tls: {cert_file: @CERT@, key_file: @KEY@, ca_file: @CA@}
cluster:
  secret_file: SECRET
services:
  - name: db
    priority: 10
    secondaries: 2
    sync_acks: 2
    checkpoint_interval: 1s
    monitor_interval: 2s
    max_restarts: 0
    restart_window: 1m
    drain: 250ms
    agent:
      command: AGENT
      args: [--flag, "-v"]
      dir: DIR
      params:
        listen: 127.0.0.1:8001
        PGDATA: /var/lib/db
        Mixed_Case_1: x
      timeouts:
        start: 1s
        stop: 2s
        promote: 3s
        demote: 4s
        monitor: 500ms
        checkpoint: 6s
        restore: 7s
  - name: kv
    depends_on: db
    secondaries: 0
  - name: web
`)
	f, _, err := loadYAML(t, content)
	if err != nil {
		t.Fatal(err)
	}
	if w := f.Warnings(); len(w) > 0 {
		t.Errorf("warnings: %q", w)
	}
	dir := strings.TrimSuffix(repl.Replace("DIR/"), "/")
	r, err := f.ReplicaConfig()
	if err != nil {
		t.Fatal(err)
	}
	if r.TLS == nil || r.ClientTLS == nil {
		t.Fatalf("TLS %v, ClientTLS %v; want both", r.TLS, r.ClientTLS)
	}
	if r.TLS.ClientAuth != tls.RequireAndVerifyClientCert || r.TLS.ClientCAs == nil || len(r.TLS.Certificates) != 1 || r.ClientTLS.RootCAs == nil {
		t.Errorf("TLS is not mutual: server %+v client %+v", r.TLS, r.ClientTLS)
	}
	r.TLS, r.ClientTLS = nil, nil
	want := Replica{
		Listen:    "127.0.0.1:7101",
		Advertise: "127.0.0.1:7201",
		DataDir:   filepath.Join(dir, "state"),
		Secret:    []byte(goodSecret),
		Services: []ReplicaService{
			{
				Name: "db", Secondaries: 2, SyncAcks: 2, MaxRestarts: 0,
				CheckpointInterval: time.Second, MonitorInterval: 2 * time.Second, RestartWindow: time.Minute,
				Drain: 250 * time.Millisecond,
				Agent: &Agent{
					Command: filepath.Join(dir, "agent"),
					Args:    []string{"--flag", "-v"},
					Dir:     dir,
					Params:  map[string]string{"listen": "127.0.0.1:8001", "PGDATA": "/var/lib/db", "Mixed_Case_1": "x"},
					Start:   time.Second, Stop: 2 * time.Second, Promote: 3 * time.Second, Demote: 4 * time.Second,
					Monitor: 500 * time.Millisecond, Checkpoint: 6 * time.Second, Restore: 7 * time.Second,
				},
			},
			{Name: "kv", DependsOn: "db", Secondaries: 0, MaxRestarts: 3,
				CheckpointInterval: 5 * time.Second, MonitorInterval: 5 * time.Second, RestartWindow: 5 * time.Minute, Drain: time.Second},
			{Name: "web", Secondaries: 1, MaxRestarts: 3,
				CheckpointInterval: 5 * time.Second, MonitorInterval: 5 * time.Second, RestartWindow: 5 * time.Minute, Drain: time.Second},
		},
	}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("ReplicaConfig\ngot  %+v\nwant %+v", r, want)
		for i := range min(len(r.Services), len(want.Services)) {
			t.Errorf("services[%d]: got %+v agent %+v; want %+v agent %+v", i, r.Services[i], r.Services[i].Agent, want.Services[i], want.Services[i].Agent)
		}
	}
	c := f.CoreConfig()
	if c.Address != "127.0.0.1:7201" || c.Services[1].DependsOn != "db" || c.Services[0].Priority != 10 {
		t.Errorf("CoreConfig: address %q, services %+v", c.Address, c.Services)
	}
	// The File holds the values too, defaults filled.
	if s := f.Services[1]; *s.Secondaries != 0 || *s.MaxRestarts != 3 || *s.CheckpointInterval != 5*time.Second || s.Agent != nil {
		t.Errorf("services[1] = %+v", s)
	}
}

// TestReplicaDefaults: the keys a file leaves out take their defaults, in
// the File and in ReplicaConfig.
func TestReplicaDefaults(t *testing.T) {
	repl := replicaDir(t)
	f, _, err := loadYAML(t, repl.Replace(apiFile("", "", "", "")))
	if err != nil {
		t.Fatal(err)
	}
	r, err := f.ReplicaConfig()
	if err != nil {
		t.Fatal(err)
	}
	def, adef := ServiceDefaults(), AgentDefaults()
	want := def
	want.Name = "kv"
	want.Agent = &adef
	want.Agent.Command = repl.Replace("AGENT")
	if len(r.Services) != 1 || !reflect.DeepEqual(r.Services[0], want) {
		t.Errorf("services %+v; want %+v", r.Services, want)
	}
	if def.Secondaries != 1 || def.SyncAcks != 0 || def.MaxRestarts != 3 || def.CheckpointInterval != 5*time.Second ||
		def.MonitorInterval != 5*time.Second || def.RestartWindow != 5*time.Minute {
		t.Errorf("ServiceDefaults() = %+v, not as documented", def)
	}
	if !reflect.DeepEqual(AgentDefaults(), Agent{Start: time.Minute, Stop: time.Minute, Promote: 30 * time.Second, Demote: 30 * time.Second,
		Monitor: 10 * time.Second, Checkpoint: 2 * time.Minute, Restore: 2 * time.Minute}) {
		t.Errorf("AgentDefaults() = %+v, not as documented", adef)
	}
	if r.DataDir != "concord-node-node-a" || f.Node.DataDir != "concord-node-node-a" {
		t.Errorf("data dir %q, %q; want concord-node-node-a", r.DataDir, f.Node.DataDir)
	}
	if r.Advertise != "127.0.0.1:7101" || f.CoreConfig().Address != "127.0.0.1:7101" {
		t.Errorf("advertised %q, core address %q; want node.api.listen", r.Advertise, f.CoreConfig().Address)
	}
	if r.TLS != nil || r.ClientTLS != nil {
		t.Error("TLS without node.api.tls")
	}
	t.Run("timeouts", func(t *testing.T) {
		f, _, err := loadYAML(t, repl.Replace(apiFile("", "", "", "      timeouts: {stop: 1s}\n")))
		if err != nil {
			t.Fatal(err)
		}
		r, err := f.ReplicaConfig()
		if err != nil {
			t.Fatal(err)
		}
		if a := r.Services[0].Agent; a.Stop != time.Second || a.Start != adef.Start || a.Restore != adef.Restore {
			t.Errorf("agent %+v; want stop 1s and the other defaults", a)
		}
	})
	t.Run("no api", func(t *testing.T) {
		f, _, err := loadYAML(t, minimal)
		if err != nil {
			t.Fatal(err)
		}
		r, err := f.ReplicaConfig()
		if err != nil {
			t.Fatal(err)
		}
		if r.Listen != "" || r.Secret != nil || r.Services[0].Agent != nil || r.Services[0].Secondaries != 1 {
			t.Errorf("replica %+v; want no API and an election-only db", r)
		}
	})
}

// TestSecretTrimmed: the secret is the file's contents without
// surrounding white space, and counts only those bytes.
func TestSecretTrimmed(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s")
	// 15 bytes of secret in 23 of file: too short.
	if err := os.WriteFile(p, []byte("\n\t 0123456789abcde \r\n  "), 0o600); err != nil {
		t.Fatal(err)
	}
	content := strings.ReplaceAll(apiFile("", "", "", ""), "SECRET", p)
	content = strings.ReplaceAll(content, "AGENT", "/bin/sh")
	_, fp, err := loadYAML(t, content)
	wantErr(t, err, fp+`:5: cluster.secret_file: "`+p+`" holds 15 bytes once surrounding white space is trimmed, but the cluster secret needs at least 16; make one with `+"`head -c 32 /dev/urandom | base64 > "+p+"`")
	if err := os.WriteFile(p, []byte("\n 0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, _, err := loadYAML(t, content)
	if err != nil {
		t.Fatal(err)
	}
	r, err := f.ReplicaConfig()
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Secret) != "0123456789abcdef" {
		t.Errorf("secret %q; want it trimmed", r.Secret)
	}
	// A secret that changed for the worse after Load fails ReplicaConfig,
	// which names the key and does not show the secret.
	if err := os.WriteFile(p, []byte(shortSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = f.ReplicaConfig()
	wantErr(t, err, "cluster.secret_file: ", "holds 11 bytes")
	if err != nil && strings.Contains(err.Error(), shortSecret) {
		t.Errorf("error shows the secret: %v", err)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	_, err = f.ReplicaConfig()
	wantErr(t, err, "cluster.secret_file: ", "cannot be read")
}

// TestRelativeCommand: a relative command starts at the working directory
// (not at agent.dir) and becomes absolute at load; a bare name is looked
// up in PATH.
func TestRelativeCommand(t *testing.T) {
	repl := replicaDir(t)
	dir := repl.Replace("DIR")
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeExecutable(t, filepath.Join(dir, "bin", "my-agent"))
	if err := os.Mkdir(filepath.Join(dir, "work"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	t.Setenv("PATH", filepath.Join(dir, "bin"))
	cases := []struct{ command, agentDir, want string }{
		{"./agent", "", filepath.Join(dir, "agent")},
		{"bin/my-agent", "", filepath.Join(dir, "bin", "my-agent")},
		{"./agent", "work", filepath.Join(dir, "agent")}, // not work/agent
		{"my-agent", "", filepath.Join(dir, "bin", "my-agent")},
	}
	for _, tc := range cases {
		t.Run(tc.command+" in "+tc.agentDir, func(t *testing.T) {
			keys := ""
			if tc.agentDir != "" {
				keys = "      dir: " + tc.agentDir + "\n"
			}
			content := strings.Replace(repl.Replace(apiFile("", "", "", keys)), "command: "+filepath.Join(dir, "agent"), "command: "+tc.command, 1)
			f, _, err := loadYAML(t, content)
			if err != nil {
				t.Fatal(err)
			}
			a := f.Services[0].Agent
			if a.Command != tc.want {
				t.Errorf("command %q; want %q", a.Command, tc.want)
			}
			if tc.agentDir != "" && a.Dir != filepath.Join(dir, tc.agentDir) {
				t.Errorf("dir %q; want %q", a.Dir, filepath.Join(dir, tc.agentDir))
			}
			r, err := f.ReplicaConfig()
			if err != nil {
				t.Fatal(err)
			}
			if r.Services[0].Agent.Command != tc.want {
				t.Errorf("ReplicaConfig command %q; want %q", r.Services[0].Agent.Command, tc.want)
			}
		})
	}
	_, p, err := loadYAML(t, strings.Replace(repl.Replace(apiFile("", "", "", "")), "command: "+filepath.Join(dir, "agent"), "command: ./nope", 1))
	wantErr(t, err, p+`:9: services[0].agent.command: "./nope" (tried `+filepath.Join(dir, "nope")+`) does not exist`)
	_, p, err = loadYAML(t, strings.Replace(repl.Replace(apiFile("", "", "", "")), "command: "+filepath.Join(dir, "agent"), "command: nope", 1))
	wantErr(t, err, p+`:9: services[0].agent.command: "nope" is not an executable found in PATH; give its path, e.g. ./nope`)
}

// TestReplicaErrors checks each rule of the new keys: the error names the
// file, line and key, and says what to do.
func TestReplicaErrors(t *testing.T) {
	repl := replicaDir(t)
	svc := func(keys string) string { return apiFile("", "", keys, "") }
	agentKeys := func(keys string) string { return apiFile("", "", "", keys) }
	tlsNode := tlsFile
	cases := []struct {
		name    string
		content string
		want    []string
		notWant []string
	}{
		// Services.
		{name: "reserved name", content: "node: {id: a}\nservices:\n  - name: concord.kv\n",
			want: []string{`FILE:3: services[0].name: "concord.kv" starts with "concord.", which is reserved for concord's own services; rename it`}},
		{name: "sync_acks above secondaries", content: svc("    secondaries: 1\n    sync_acks: 2\n"),
			want: []string{"FILE:9: services[0].sync_acks: 2 is more than services[0].secondaries 1: a synchronous checkpoint would wait for acknowledgements from secondaries that do not exist; lower sync_acks, or raise secondaries"}},
		{name: "sync_acks above the default secondaries", content: "node: {id: a}\nservices:\n  - {name: db, sync_acks: 2}\n",
			want: []string{"FILE:3: services[0].sync_acks: 2 is more than services[0].secondaries 1"}},
		{name: "negative counts", content: svc("    secondaries: -1\n    sync_acks: -1\n    max_restarts: -2\n"),
			want: []string{
				"FILE:8: services[0].secondaries: is -1; give 0 or more (the default is 1)",
				"FILE:9: services[0].sync_acks: is -1; give 0",
				"FILE:10: services[0].max_restarts: is -2; give 0 (resign at the first failure) or more (the default is 3)",
			}},
		{name: "endpoint not host:port", content: "node: {id: a}\nservices:\n  - name: db\n    endpoint: db.local\n",
			want: []string{`FILE:4: services[0].endpoint: "db.local" is not host:port; give the address clients reach the service at on this node, e.g. 10.0.0.1:5432`}},
		{name: "negative drain", content: "node: {id: a}\nservices:\n  - name: db\n    drain: -1s\n",
			want: []string{`FILE:4: services[0].drain: is -1s; give 0 (resign at once in a switchover) or a positive duration, e.g. 1s (the default)`}},
		{name: "endpoint on every interface", content: "node: {id: a}\nservices:\n  - name: db\n    endpoint: 0.0.0.0:5432\n",
			want: []string{`FILE:4: services[0].endpoint: "0.0.0.0:5432" names every interface, which no client can dial; give this node's address`}},
		{name: "zero durations", content: svc("    checkpoint_interval: 0s\n    monitor_interval: 0\n    restart_window: -1m\n"),
			want: []string{
				"FILE:8: services[0].checkpoint_interval: is 0s; it must be positive, e.g. 5s (the default)",
				"FILE:9: services[0].monitor_interval: is 0s; it must be positive, e.g. 5s",
				"FILE:10: services[0].restart_window: is -1m0s; it must be positive, e.g. 5m0s",
			}},
		{name: "zero timeout", content: agentKeys("      timeouts:\n        start: 0s\n        checkpoint: -1s\n"),
			want: []string{
				"FILE:11: services[0].agent.timeouts.start: is 0s; it must be positive, e.g. 1m0s (the default)",
				"FILE:12: services[0].agent.timeouts.checkpoint: is -1s; it must be positive, e.g. 2m0s",
			}},
		{name: "depends_on unknown", content: "node: {id: a}\nservices:\n  - {name: kv, depends_on: db}\n",
			want: []string{`FILE:3: services[0].depends_on: "db" is not a service of this node; a node must provide a service's dependency too, so that their primaries can be the same node: list db in services, or fix the name`}},
		{name: "depends_on itself", content: "node: {id: a}\nservices:\n  - name: kv\n    depends_on: kv\n",
			want: []string{`FILE:4: services[0].depends_on: "kv" is the service itself; name another service of this node, or remove depends_on`}},
		{name: "depends_on cycle", content: "node: {id: a}\nservices:\n  - {name: x}\n  - {name: a, depends_on: b}\n  - {name: b, depends_on: c}\n  - {name: c, depends_on: a}\n  - {name: d, depends_on: a}\n",
			want:    []string{`FILE:4: services[1].depends_on: "b" closes a cycle: a -> b -> c -> a; dependencies must form a tree, so remove one depends_on of the cycle`},
			notWant: []string{"services[2].depends_on", "services[3].depends_on", "services[4].depends_on", "Services["}},

		// Agents.
		{name: "agent without api", content: "node: {id: a}\nservices:\n  - name: db\n  - name: kv\n    agent: {command: /bin/sh}\n",
			want: []string{"FILE:1: node.api.listen: missing; services[1].agent (kv) runs a resource agent, and the nodes exchange its checkpoints through their APIs: set node.api.listen to the host:port the API listens on, e.g. 127.0.0.1:7101"}},
		{name: "agent without command", content: strings.Replace(agentKeys(""), "      command: AGENT\n", "      args: [x]\n", 1),
			want: []string{"FILE:8: services[0].agent.command: missing; give the path of the service's resource agent, e.g. ./kvstore (relative paths start at the working directory), or remove services[0].agent to make the service election-only"}},
		{name: "empty agent", content: strings.Replace(agentKeys(""), "    agent:\n      command: AGENT\n", "    agent: {}\n", 1),
			want: []string{"FILE:8: services[0].agent.command: missing"}},
		{name: "command missing", content: strings.Replace(agentKeys(""), "AGENT", "DIR/nope", 1),
			want: []string{`FILE:9: services[0].agent.command: "DIR/nope" does not exist; build or install the agent there, or give its path (relative paths start at the working directory)`}},
		{name: "command not executable", content: strings.Replace(agentKeys(""), "AGENT", "NOEXEC", 1),
			want: []string{`FILE:9: services[0].agent.command: "NOEXEC" is not executable (mode -rw-------); make it so with chmod +x NOEXEC`}},
		{name: "command is a directory", content: strings.Replace(agentKeys(""), "AGENT", "DIR", 1),
			want: []string{`FILE:9: services[0].agent.command: "DIR" is a directory; give the path of the agent's executable`}},
		{name: "dir missing", content: agentKeys("      dir: DIR/none\n"),
			want: []string{`FILE:10: services[0].agent.dir: "DIR/none" does not exist; create it, or leave dir empty for the directory concord runs in`}},
		{name: "dir is a file", content: agentKeys("      dir: AGENT\n"),
			want: []string{`FILE:10: services[0].agent.dir: "AGENT" is not a directory`}},
		{name: "param name", content: agentKeys("      params:\n        ok_1: a\n        bad-name: b\n"),
			want: []string{`FILE:12: services[0].agent.params[bad-name]: the name "bad-name" holds other characters than letters, digits and '_', but it becomes the environment variable CONCORD_PARAM_<NAME>; rename it`}},
		{name: "param names differing in case", content: agentKeys("      params:\n        ok_1: a\n        Listen: c\n        LISTEN: d\n"),
			want: []string{`FILE:13: services[0].agent.params[LISTEN]: given twice (also as Listen on line 12); names differing only in case are the same name to concord; rename one`}},
		{name: "param given twice", content: agentKeys("      params:\n        a: x\n        a: y\n"),
			want: []string{"FILE:12: services[0].agent.params[a]: given twice (also as a on line 11); keep one"}},

		// Wrong types and unknown keys in the new sections.
		{name: "secondaries word", content: svc("    secondaries: many\n"),
			want: []string{`FILE:8: services[0].secondaries: "many" is not a whole number; write e.g. 10`}},
		{name: "interval without unit", content: svc("    checkpoint_interval: 5\n"),
			want: []string{"FILE:8: services[0].checkpoint_interval: 5 has no unit; write e.g. 5s or 5ms"}},
		{name: "timeout word", content: agentKeys("      timeouts: {restore: soon}\n"),
			want: []string{`FILE:10: services[0].agent.timeouts.restore: "soon" is not a duration; write e.g. 2m0s`}},
		{name: "params list", content: agentKeys("      params: [a, b]\n"),
			want: []string{"FILE:10: services[0].agent.params: a list is not a section of names and values; write them on the lines below services[0].agent.params, indented"}},
		{name: "param number", content: agentKeys("      params:\n        port: 8001\n"),
			want: []string{`FILE:11: services[0].agent.params[port]: 8001 is not a string; quote it: "8001"`}},
		{name: "args string", content: agentKeys("      args: --flag\n"),
			want: []string{`FILE:10: services[0].agent.args: "--flag" is a single string, not a list; write [--flag]`}},
		{name: "agent scalar", content: strings.Replace(agentKeys(""), "    agent:\n      command: AGENT\n", "    agent: ./kvstore\n", 1),
			want: []string{`FILE:8: services[0].agent: "./kvstore" is not a section; write the keys of services[0].agent on the lines below it, indented`}},
		{name: "misspelt agent key", content: agentKeys("      comand: x\n"),
			want: []string{"FILE:10: services[0].agent.comand: unknown key; did you mean services[0].agent.command?"}},
		{name: "misspelt timeout", content: agentKeys("      timeouts: {promot: 1s}\n"),
			want: []string{"FILE:10: services[0].agent.timeouts.promot: unknown key; did you mean services[0].agent.timeouts.promote?"}},
		{name: "misspelt service key", content: svc("    secondary: 1\n"),
			want: []string{"FILE:8: services[0].secondary: unknown key; did you mean services[0].secondaries?"}},
		{name: "misspelt api key", content: apiFile("  api_listen: x\n", "", "", ""),
			want: []string{"FILE:4: node.api_listen: unknown key"}},

		// The API, the address and the secret.
		{name: "api without secret", content: strings.Replace(apiFile("", "", "", ""), "  secret_file: SECRET\n", "", 1),
			want: []string{"FILE:4: cluster.secret_file: missing; node.api.listen is set, and the nodes' APIs authenticate each other with a secret they share: make one with `head -c 32 /dev/urandom | base64 > cluster.secret`, copy the file to every node, and set secret_file: cluster.secret"}},
		{name: "secret missing", content: strings.Replace(apiFile("", "", "", ""), "SECRET", "DIR/none", 1),
			want: []string{`FILE:5: cluster.secret_file: "DIR/none" does not exist; give the path of a readable file holding the cluster's secret (relative paths start at the working directory), or make one with ` + "`head -c 32 /dev/urandom | base64 > DIR/none`"}},
		{name: "secret short", content: strings.Replace(apiFile("", "", "", ""), "SECRET", "SHORT", 1),
			want:    []string{`FILE:5: cluster.secret_file: "SHORT" holds 11 bytes once surrounding white space is trimmed, but the cluster secret needs at least 16; make one with ` + "`head -c 32 /dev/urandom | base64 > SHORT` and copy the file to every node"},
			notWant: []string{shortSecret}},
		{name: "secret a directory", content: strings.Replace(apiFile("", "", "", ""), "SECRET", "DIR", 1),
			want: []string{`FILE:5: cluster.secret_file: "DIR" is a directory`}},
		{name: "listen not host:port", content: strings.Replace(apiFile("", "", "", ""), "127.0.0.1:7101", "localhost", 1),
			want: []string{`FILE:3: node.api.listen: "localhost" is not host:port; write host:port, e.g. 127.0.0.1:7101 (or :7101 for every interface)`}},
		{name: "listen port 0", content: strings.Replace(apiFile("", "", "", ""), "127.0.0.1:7101", "127.0.0.1:0", 1),
			want: []string{`FILE:3: node.api.listen: "127.0.0.1:0" has no valid port (1 to 65535)`}},
		{name: "every interface without address", content: strings.Replace(apiFile("", "", "", ""), "127.0.0.1:7101", "0.0.0.0:7101", 1),
			want: []string{`FILE:1: node.address: missing; node.api.listen "0.0.0.0:7101" listens on every interface, which is no address the other nodes can dial: set node.address to the host:port where they reach this node, e.g. 10.0.0.1:7101`}},
		{name: "address not dialable", content: apiFile("  address: \":7101\"\n", "", "", ""),
			want: []string{`FILE:4: node.address: ":7101" names no host the other nodes can dial (an empty host, 0.0.0.0 or :: means every interface); write the host:port where the other nodes reach this node's API (node.api.listen), e.g. 10.0.0.1:7101`}},
		{name: "address without port", content: apiFile("  address: 10.0.0.1\n", "", "", ""),
			want: []string{`FILE:4: node.address: "10.0.0.1" is not host:port`}},
		{name: "api on the embedded client port", content: strings.Replace(apiFile("", "", "", ""), "127.0.0.1:7101", "127.0.0.1:2379", 1),
			want: []string{`FILE:3: node.api.listen: "127.0.0.1:2379" takes the port of store.embedded.client_url http://127.0.0.1:2379; give the API a port of its own, e.g. 7101`}},
		{name: "data_dir of the embedded store", content: "node:\n  id: a\n  data_dir: ./concord-data\nservices: [{name: db}]\n",
			want: []string{`FILE:3: node.data_dir: "./concord-data" is also store.embedded.data_dir; give each its own directory, e.g. concord-node-a`}},
		{name: "data_dir a file", content: "node:\n  id: a\n  data_dir: AGENT\nservices: [{name: db}]\n",
			want: []string{`FILE:3: node.data_dir: "AGENT" is a file, not a directory`}},

		// node.api.tls.
		{name: "tls without api", content: "node:\n  id: a\n  api:\n    tls: {ca_file: @CA@}\nservices: [{name: db}]\n",
			want: []string{"FILE:4: node.api.tls: is set, but node.api.listen is not, so there is no API to secure; set node.api.listen, or remove node.api.tls"}},
		{name: "tls partial", content: tlsNode("{cert_file: @CERT@}"),
			want: []string{
				"node.api.tls.key_file: missing; node.api.tls is mutual: every node presents its certificate (cert_file, key_file) and checks the others' against ca_file; set all three, or remove node.api.tls",
				"node.api.tls.ca_file: missing",
			}},
		{name: "tls files missing", content: tlsNode("{cert_file: DIR/c.pem, key_file: DIR/k.pem, ca_file: DIR/ca.pem}"),
			want: []string{`FILE:6: node.api.tls.cert_file: "DIR/c.pem" does not exist`, `FILE:8: node.api.tls.ca_file: "DIR/ca.pem" does not exist`}},
		{name: "tls not pem", content: tlsNode("{cert_file: SECRET, key_file: @KEY@, ca_file: SECRET}"),
			want:    []string{`FILE:6: node.api.tls.cert_file: "SECRET" with node.api.tls.key_file`, `node.api.tls.ca_file: "SECRET" holds no PEM certificate`},
			notWant: []string{goodSecret}},
		{name: "tls other CA", content: tlsNode("{cert_file: @CERT@, key_file: @KEY@, ca_file: @OTHERCA@}"),
			want: []string{`FILE:6: node.api.tls.cert_file: "@CERT@" is not signed by the CA in node.api.tls.ca_file "@OTHERCA@", so the other nodes (which share ca_file) would refuse it`}},
		{name: "tls host not named", content: strings.Replace(tlsNode("{cert_file: @CERT@, key_file: @KEY@, ca_file: @CA@}"), "  id: node-a\n", "  id: node-a\n  address: 10.0.0.9:7101\n", 1),
			want: []string{`node.api.tls.cert_file: "@CERT@" does not name 10.0.0.9, the host the other nodes dial (node.address, else node.api.listen), so they would refuse it; reissue it with 10.0.0.9 among its subject alternative names`}},
		{name: "tls server only", content: tlsNode("{cert_file: @SONLY@, key_file: @SONLYKEY@, ca_file: @CA@}"),
			want: []string{`FILE:6: node.api.tls.cert_file: "@SONLY@" is not valid for client authentication (its extended key usage lacks clientAuth), but the node presents it when it calls the other nodes' APIs, which would refuse it; reissue it with clientAuth as well as serverAuth`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, p, err := loadYAML(t, repl.Replace(tc.content))
			if f != nil {
				t.Errorf("Load returned a File with the error")
			}
			for _, w := range tc.want {
				wantErr(t, err, repl.Replace(strings.ReplaceAll(w, "FILE", p)))
			}
			for _, nw := range tc.notWant {
				if err != nil && strings.Contains(err.Error(), repl.Replace(strings.ReplaceAll(nw, "FILE", p))) {
					t.Errorf("error contains %q:\n%v", nw, err)
				}
			}
		})
	}
}

// tlsFile is a valid file with an API whose node.api.tls (on line 6) is
// tls.
func tlsFile(tls string) string {
	return "node:\n  id: node-a\n  api:\n    listen: 127.0.0.1:7101\n    tls:\n      " + strings.Join(strings.Split(strings.Trim(tls, "{}"), ", "), "\n      ") +
		"\ncluster: {secret_file: SECRET}\nservices: [{name: db}]\n"
}

// TestReplicaWarnings: advice on valid files.
func TestReplicaWarnings(t *testing.T) {
	repl := replicaDir(t)
	cases := []struct{ name, content, want string }{
		{"monitor timeout not below the interval", apiFile("", "", "    monitor_interval: 1s\n", ""),
			"FILE:9: services[0].agent.timeouts.monitor: 10s is not shorter than services[0].monitor_interval 1s: a slow monitor action would run into the next one"},
		{"plaintext api on the network", strings.Replace(apiFile("  address: 10.0.0.1:7101\n", "", "", ""), "127.0.0.1:7101", "0.0.0.0:7101", 1),
			"FILE:3: node.api.listen: 0.0.0.0:7101 is not a loopback address and node.api.tls is not set, so checkpoints (the services' whole state) cross the network in plaintext"},
		{"secret without api", "node: {id: a}\ncluster: {secret_file: SECRET}\nservices: [{name: db}]\n",
			"FILE:2: cluster.secret_file: is set, but node.api.listen is not, so nothing uses it"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, p, err := loadYAML(t, repl.Replace(tc.content))
			if err != nil {
				t.Fatal(err)
			}
			w := strings.Join(f.Warnings(), "\n")
			if want := strings.ReplaceAll(tc.want, "FILE", p); !strings.Contains(w, want) {
				t.Errorf("warnings lack %q:\n%s", want, w)
			}
		})
	}
	t.Run("secret readable by others", func(t *testing.T) {
		p := repl.Replace("SECRET")
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(p, 0o600)
		f, _, err := loadYAML(t, repl.Replace(apiFile("", "", "", "")))
		if err != nil {
			t.Fatal(err)
		}
		w := strings.Join(f.Warnings(), "\n")
		if want := `cluster.secret_file: "` + p + `" can be read by other users (mode -rw-r--r--); make it private with chmod 600 ` + p; !strings.Contains(w, want) {
			t.Errorf("warnings lack %q:\n%s", want, w)
		}
	})
}

// TestReplicaEnv: the scalar keys take CONCORD_ variables; CONCORD_SERVICES
// replaces the services, agents included, with election-only ones.
func TestReplicaEnv(t *testing.T) {
	repl := replicaDir(t)
	f, _, err := loadYAML(t, repl.Replace(apiFile("", "", "", "")),
		"CONCORD_NODE_API_LISTEN=127.0.0.1:7300",
		"CONCORD_NODE_DATA_DIR=elsewhere",
		"CONCORD_NODE_ADDRESS=127.0.0.2:7300",
		"CONCORD_CLUSTER_SECRET_FILE="+repl.Replace("SECRET"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Node.API.Listen != "127.0.0.1:7300" || f.Node.DataDir != "elsewhere" || f.CoreConfig().Address != "127.0.0.2:7300" {
		t.Errorf("node %+v", f.Node)
	}
	f, _, err = loadYAML(t, repl.Replace(apiFile("", "", "", "")), "CONCORD_SERVICES=db:10,kv")
	if err != nil {
		t.Fatal(err)
	}
	want := []Service{filled(Service{Name: "db", Priority: 10}), filled(Service{Name: "kv"})}
	if !reflect.DeepEqual(f.Services, want) {
		t.Errorf("services %+v; want %+v", f.Services, want)
	}
	_, p, err := loadYAML(t, repl.Replace(apiFile("", "", "", "")), "CONCORD_NODE_API_LISTEN=nowhere")
	wantErr(t, err, `CONCORD_NODE_API_LISTEN: node.api.listen: "nowhere" is not host:port`)
	if err != nil && strings.Contains(err.Error(), p) {
		t.Errorf("error names the file, not the variable: %v", err)
	}
}

// TestValidateReplicaBuiltInCode: in a File built in code, nil service
// fields read as their defaults, and Validate leaves f as it is.
func TestValidateReplicaBuiltInCode(t *testing.T) {
	repl := replicaDir(t)
	f := Defaults()
	f.Node.ID = "a"
	f.Node.API.Listen = "127.0.0.1:7101"
	f.Cluster.SecretFile = repl.Replace("SECRET")
	f.Services = []Service{{Name: "db", Agent: &ServiceAgent{Command: repl.Replace("AGENT")}}, {Name: "kv", DependsOn: "db", SyncAcks: 1}}
	if err := f.Validate(); err != nil {
		t.Fatal(err)
	}
	if f.Services[0].Secondaries != nil || f.Services[0].Agent.Timeouts.Start != nil {
		t.Error("Validate filled defaults into f")
	}
	r, err := f.ReplicaConfig()
	if err != nil {
		t.Fatal(err)
	}
	if r.Services[0].Agent.Start != time.Minute || r.Services[1].Secondaries != 1 || r.DataDir != "concord-node-a" {
		t.Errorf("replica %+v", r)
	}
	if c := f.CoreConfig(); c.Services[1].DependsOn != "db" || c.Validate() != nil {
		t.Errorf("core config %+v: %v", c, c.Validate())
	}
	zero := 0 * time.Second
	f.Services[1].CheckpointInterval = &zero
	f.Services[0].Agent.Params = map[string]string{"dir": "a", "DIR": "b"}
	wantErr(t, f.Validate(), "config: services[1].checkpoint_interval: is 0s",
		`config: services[0].agent.params[dir]: the names "DIR" and "dir" are both CONCORD_PARAM_DIR to the agent; rename one`)
}

// TestAPITLSHandshake: the server and client configurations of
// ReplicaConfig complete a mutual TLS handshake, and the server refuses a
// client without a certificate.
func TestAPITLSHandshake(t *testing.T) {
	repl := replicaDir(t)
	f, _, err := loadYAML(t, repl.Replace(tlsFile("{cert_file: @CERT@, key_file: @KEY@, ca_file: @CA@}")))
	if err != nil {
		t.Fatal(err)
	}
	r, err := f.ReplicaConfig()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	handshake := func(client *tls.Config) (serverErr, clientErr error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done := make(chan error, 1)
		go func() {
			conn, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			defer conn.Close()
			done <- tls.Server(conn, r.TLS).HandshakeContext(ctx)
		}()
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c := client.Clone()
		c.ServerName = "127.0.0.1"
		tc := tls.Client(conn, c)
		clientErr = tc.HandshakeContext(ctx)
		if clientErr == nil {
			// With TLS 1.3 the server checks the client's certificate
			// after the client's side is done; a read sees its verdict.
			_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			_, _ = tc.Read(make([]byte, 1))
		}
		conn.Close()
		return <-done, clientErr
	}
	if serr, cerr := handshake(r.ClientTLS); serr != nil || cerr != nil {
		t.Errorf("mutual handshake: server %v, client %v", serr, cerr)
	}
	noCert := r.ClientTLS.Clone()
	noCert.GetClientCertificate = nil
	if serr, _ := handshake(noCert); serr == nil {
		t.Error("the server accepted a client without a certificate")
	}
}

// TestKVStoreExamples loads the three kvstore nodes from a directory set
// up as their comments say, and checks that they form one cluster of
// distinct nodes running the kv service as the task describes.
func TestKVStoreExamples(t *testing.T) {
	var paths []string
	for _, n := range []string{"a", "b", "c"} {
		p, err := filepath.Abs("../../configs/kvstore-node-" + n + ".yaml")
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	dir := t.TempDir()
	writeExecutable(t, filepath.Join(dir, "kvstore"))
	if err := os.WriteFile(filepath.Join(dir, "cluster.secret"), []byte(goodSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	seen := map[string]string{}
	var cluster string
	for i, p := range paths {
		n := string(rune('a' + i))
		f, err := LoadEnv(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		r, err := f.ReplicaConfig()
		if err != nil {
			t.Fatal(err)
		}
		port := string(rune('1' + i))
		want := Replica{
			Listen: "127.0.0.1:710" + port, Advertise: "127.0.0.1:710" + port,
			DataDir: "concord-node-" + n, Secret: []byte(goodSecret),
			Services: []ReplicaService{{
				Name: "kv", Secondaries: 1, SyncAcks: 1, MaxRestarts: 3,
				CheckpointInterval: 2 * time.Second, MonitorInterval: time.Second, RestartWindow: 5 * time.Minute, Drain: time.Second,
				Endpoint: "127.0.0.1:810" + port,
				Agent: &Agent{
					Command: filepath.Join(dir, "kvstore"),
					Params:  map[string]string{"listen": "127.0.0.1:810" + port, "dir": "kv-" + n, "lease": "5s"},
					Start:   time.Minute, Stop: time.Minute, Promote: 30 * time.Second, Demote: 30 * time.Second,
					Monitor: 900 * time.Millisecond, Checkpoint: 2 * time.Minute, Restore: 2 * time.Minute,
				},
			}},
		}
		if !reflect.DeepEqual(r, want) {
			t.Errorf("%s:\ngot  %+v %+v\nwant %+v %+v", p, r, r.Services[0].Agent, want, want.Services[0].Agent)
		}
		e := f.Store.Embedded
		if f.Node.ID != "node-"+n || e.Name != f.Node.ID {
			t.Errorf("%s: node %q, member %q", p, f.Node.ID, e.Name)
		}
		if i == 0 {
			cluster = e.InitialCluster
		} else if e.InitialCluster != cluster || e.ClusterToken != "concord-kvstore" {
			t.Errorf("%s: initial_cluster %q token %q; want the same on every node", p, e.InitialCluster, e.ClusterToken)
		}
		for _, v := range []string{e.ClientURL, e.PeerURL, e.DataDir, r.Listen, r.DataDir, r.Services[0].Agent.Params["listen"], r.Services[0].Agent.Params["dir"]} {
			if other, dup := seen[v]; dup {
				t.Errorf("%s and %s share %s", other, p, v)
			}
			seen[v] = p
		}
	}
}

// TestCoreConfigDependsOn: depends_on reaches core, whose own check agrees
// with the config's.
func TestCoreConfigDependsOn(t *testing.T) {
	f, _, err := loadYAML(t, "node: {id: a}\nservices:\n  - {name: db}\n  - {name: kv, depends_on: db}\n")
	if err != nil {
		t.Fatal(err)
	}
	got := f.CoreConfig().Services
	want := []core.ServiceConfig{{Name: "db"}, {Name: "kv", DependsOn: "db"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("services %+v; want %+v", got, want)
	}
}

func TestProxies(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	good := "node: {id: a}\nservices: [{name: db}]\nproxies:\n  - service: kv\n    listen: 127.0.0.1:15432\n  - service: db\n    listen: 127.0.0.1:15433\n    hold_timeout: 3s\n"
	if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := LoadEnv(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := f.ProxyConfigs()
	want := []Proxy{
		{Service: "kv", Listen: "127.0.0.1:15432", HoldTimeout: DefaultProxyHold, DialTimeout: DefaultProxyDial},
		{Service: "db", Listen: "127.0.0.1:15433", HoldTimeout: 3 * time.Second, DialTimeout: DefaultProxyDial},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ProxyConfigs = %+v, want %+v", got, want)
	}
	if w := f.Warnings(); len(w) != 0 {
		t.Fatalf("warnings for a good file: %v", w)
	}
	// A hold no longer than the drain of a service this node publishes
	// would close the connections held through a switchover.
	short := "node: {id: a}\nservices: [{name: db, endpoint: 127.0.0.1:5432, drain: 3s}]\nproxies:\n  - service: db\n    listen: 127.0.0.1:15433\n    hold_timeout: 3s\n"
	if err := os.WriteFile(path, []byte(short), 0o600); err != nil {
		t.Fatal(err)
	}
	if f, err = LoadEnv(path, nil); err != nil {
		t.Fatal(err)
	}
	if w := strings.Join(f.Warnings(), "\n"); !strings.Contains(w, "proxies[0].hold_timeout: 3s is not longer than services[0].drain 3s") {
		t.Fatalf("warnings %q, want one about proxies[0].hold_timeout", w)
	}
	for bad, wants := range map[string][]string{
		"node: {id: a}\nservices: [{name: db}]\nproxies:\n  - service: bad/name\n    listen: nowhere\n  - service: db\n    listen: 127.0.0.1:1\n    hold_timeout: -1s\n  - {service: db, listen: 127.0.0.1:1}\n": {
			"proxies[0].service", `proxies[0].listen: "nowhere" is not host:port`, "proxies[1].hold_timeout: is -1s",
			`proxies[2].listen: "127.0.0.1:1" is also proxies[1].listen`,
		},
		"node: {id: a}\nservices: [{name: db}]\nproxies:\n  - {service: db, listen: 127.0.0.1:1, bogus: 1}\n": {
			"proxies[0].bogus: unknown key; proxies[0] takes service, listen, hold_timeout, dial_timeout",
		},
	} {
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err = LoadEnv(path, nil)
		for _, w := range wants {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("bad proxies: %v, want it to name %q", err, w)
			}
		}
	}
}
