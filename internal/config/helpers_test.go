package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeFile writes content to name in a fresh temporary directory and
// returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// loadYAML loads content as c.yaml with the given environment.
func loadYAML(t *testing.T, content string, env ...string) (*File, string, error) {
	t.Helper()
	p := writeFile(t, "c.yaml", content)
	f, err := LoadEnv(p, env)
	return f, p, err
}

// wantErr checks that err holds every substring of want.
func wantErr(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one containing %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not contain %q:\n%v", w, err)
		}
	}
}

// minimal is the smallest valid file.
const minimal = `
node:
  id: node-a
services:
  - name: db
`

// filled returns s with the defaults Load fills in.
func filled(s Service) Service { return s.withDefaults() }

// writeExecutable writes a shell script that does nothing to path, mode
// 0755.
func writeExecutable(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// serviceKeys lists the keys of a services item below its own level
// (priority, agent.command, agent.timeouts.start, ...), from the schema.
func serviceKeys() []string {
	var walk func(t reflect.Type, prefix string) []string
	walk = func(t reflect.Type, prefix string) []string {
		var out []string
		for _, k := range childKeys(t) {
			sf, _ := childKey(t, k)
			if ft := deref(sf.Type); isSection(ft) {
				out = append(out, walk(ft, prefix+k+".")...)
				continue
			}
			out = append(out, prefix+k)
		}
		return out
	}
	return walk(reflect.TypeFor[Service](), "")
}
