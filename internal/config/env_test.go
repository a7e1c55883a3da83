package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestEnvOverridesEveryKey sets each key's variable while the file leaves
// the key out (viper's Unmarshal would ignore AutomaticEnv there), and
// checks that the value lands in the key's field.
func TestEnvOverridesEveryKey(t *testing.T) {
	p := writeFile(t, "c.yaml", minimal)
	for _, l := range leaves {
		t.Run(l.env, func(t *testing.T) {
			var text string
			var want any
			switch {
			case l.typ == durationType:
				text, want = " 7s ", 7*time.Second
			case l.typ.Kind() == reflect.Int:
				text, want = "7", 7
			case l.typ.Kind() == reflect.Bool:
				text, want = "true", true
			case l.typ.Kind() == reflect.Slice:
				text, want = "a:1, b:2,", []string{"a:1", "b:2"}
			default:
				text, want = "v-"+l.path, "v-"+l.path
			}
			f, err := decode(p, []string{l.env + "=" + text})
			if err != nil {
				t.Fatal(err)
			}
			got := reflect.ValueOf(f).Elem().FieldByIndex(l.index).Interface()
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s=%q gave %s = %#v; want %#v", l.env, text, l.path, got, want)
			}
			if src, _ := f.source(l.path); src != l.env {
				t.Errorf("source of %s = %q; want %s", l.path, src, l.env)
			}
		})
	}
}

func TestEnvNames(t *testing.T) {
	seen := map[string]string{ServicesEnv: "services", ConfigEnv: "(the config file path)"}
	for _, l := range leaves {
		if other, dup := seen[l.env]; dup {
			t.Errorf("%s and %s share the variable %s", l.path, other, l.env)
		}
		seen[l.env] = l.path
	}
	for path, env := range map[string]string{
		"node.id":                  "CONCORD_NODE_ID",
		"store.session_ttl":        "CONCORD_STORE_SESSION_TTL",
		"store.endpoints":          "CONCORD_STORE_ENDPOINTS",
		"store.embedded.data_dir":  "CONCORD_STORE_EMBEDDED_DATA_DIR",
		"store.tls.ca_file":        "CONCORD_STORE_TLS_CA_FILE",
		"store.auth.password_file": "CONCORD_STORE_AUTH_PASSWORD_FILE",
		"log.format":               "CONCORD_LOG_FORMAT",
	} {
		if l := leafByPath[path]; l == nil || l.env != env {
			t.Errorf("%s: variable %v; want %s", path, l, env)
		}
	}
}

func TestEnvOverridesFile(t *testing.T) {
	f, _, err := loadYAML(t, minimal+"store:\n  session_ttl: 10s\n  type: embedded\n",
		"CONCORD_STORE_SESSION_TTL=30s",
		"CONCORD_STORE_SESSION_TTL=1s", // duplicates: the first counts, as with os.Getenv
		"CONCORD_NODE_ID=",             // empty: ignored
		"CONCORD_LOG_LEVEL=debug",
		"OTHER=x",
	)
	if err != nil {
		t.Fatal(err)
	}
	if f.Store.SessionTTL != 30*time.Second || f.Store.KeepaliveInterval != 10*time.Second {
		t.Errorf("session_ttl %v keepalive %v; want 30s and 10s", f.Store.SessionTTL, f.Store.KeepaliveInterval)
	}
	if f.Node.ID != "node-a" || f.Log.Level != "debug" {
		t.Errorf("node.id %q log.level %q; want node-a, debug", f.Node.ID, f.Log.Level)
	}
}

func TestEnvInsideMissingSection(t *testing.T) {
	// The file has store.tls empty and no auth section; the variables
	// fill keys inside them.
	f, _, err := loadYAML(t, minimal+"store:\n  type: etcd\n  endpoints: [a:1]\n  tls:\n",
		"CONCORD_STORE_TLS_SERVER_NAME=etcd.internal",
		"CONCORD_STORE_AUTH_USERNAME=u",
		"CONCORD_STORE_AUTH_PASSWORD=p")
	if err != nil {
		t.Fatal(err)
	}
	if f.Store.TLS.ServerName != "etcd.internal" || f.Store.Auth.Username != "u" || f.Store.Auth.Password != "p" {
		t.Errorf("got tls %+v auth %+v", f.Store.TLS, f.Store.Auth)
	}
	if f.Store.Endpoints[0] != "a:1" {
		t.Errorf("endpoints %q; want the file's", f.Store.Endpoints)
	}
}

func TestEnvServices(t *testing.T) {
	f, _, err := loadYAML(t, minimal, "CONCORD_SERVICES= db:10 , cache,web:-2")
	if err != nil {
		t.Fatal(err)
	}
	want := []Service{filled(Service{Name: "db", Priority: 10}), filled(Service{Name: "cache"}), filled(Service{Name: "web", Priority: -2})}
	if !reflect.DeepEqual(f.Services, want) {
		t.Errorf("services %+v; want %+v (replacing the file's)", f.Services, want)
	}

	// A file without services, completed by the variable.
	f, _, err = loadYAML(t, "node: {id: a}\n", "CONCORD_SERVICES=db")
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Services) != 1 || f.Services[0].Name != "db" {
		t.Errorf("services %+v; want db", f.Services)
	}
}

func TestEnvUnknownVariableWarns(t *testing.T) {
	f, _, err := loadYAML(t, minimal, "CONCORD_STORE_SESION_TTL=5s", "CONCORD_ZZZ=1", ConfigEnv+"=c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(f.Warnings(), "\n")
	for _, want := range []string{
		"CONCORD_STORE_SESION_TTL: matches no config key and is ignored; did you mean CONCORD_STORE_SESSION_TTL?",
		"CONCORD_ZZZ: matches no config key and is ignored",
	} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings lack %q:\n%s", want, w)
		}
	}
	if strings.Contains(w, ConfigEnv) {
		t.Errorf("%s, which names the file for cmd/concord, drew a warning:\n%s", ConfigEnv, w)
	}
}

// TestLoadReadsProcessEnvironment covers Load itself: a variable for a
// key the file leaves out still counts.
func TestLoadReadsProcessEnvironment(t *testing.T) {
	p := writeFile(t, "c.yaml", minimal)
	t.Setenv("CONCORD_STORE_SESSION_TTL", "21s")
	t.Setenv("CONCORD_LOG_FORMAT", "json")
	f, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if f.Store.SessionTTL != 21*time.Second || f.Store.KeepaliveInterval != 7*time.Second || f.Log.Format != "json" {
		t.Errorf("session_ttl %v keepalive %v format %q; want 21s, 7s, json", f.Store.SessionTTL, f.Store.KeepaliveInterval, f.Log.Format)
	}
}
