package core_test

import (
	"context"
	"strings"
	"testing"

	"github.com/concordha/concord/core"
)

var (
	dbDep  = core.ServiceConfig{Name: "db"}
	appDep = core.ServiceConfig{Name: "app", DependsOn: "db"}
	// web depends on app: a chain of two.
	webDep = core.ServiceConfig{Name: "web", DependsOn: "app"}
)

// TestDependentsFollowTheirDependency: a dependent's primary is always the
// node that is its dependency's primary, at the start, after a
// resignation of the dependency, and after a crash.
func TestDependentsFollowTheirDependency(t *testing.T) {
	c := newCluster(t)
	// The dependent's priorities point the other way, so that only the
	// dependency decides where it goes.
	c.start("a", dbDep, core.ServiceConfig{Name: "app", DependsOn: "db", Priority: 0}, webDep)
	c.start("b", core.ServiceConfig{Name: "db", Priority: 5}, core.ServiceConfig{Name: "app", DependsOn: "db", Priority: 1}, webDep)
	c.start("c", dbDep, core.ServiceConfig{Name: "app", DependsOn: "db", Priority: 9}, webDep)
	colocated := func(except ...string) string {
		t.Helper()
		p := c.primaryOf("db", except...)
		if a := c.primaryOf("app", except...); a != p {
			t.Fatalf("app's primary is %s, db's is %s: not co-located", a, p)
		}
		if w := c.primaryOf("web", except...); w != p {
			t.Fatalf("web's primary is %s, db's is %s: not co-located", w, p)
		}
		return p
	}
	// Whichever node won db (the first to join may have), app and web,
	// whose priorities favour c, are on it.
	first := colocated()

	ctx, cancel := context.WithTimeout(context.Background(), 10*ttl)
	defer cancel()
	if err := c.nodes[first].Resign(ctx, "db"); err != nil {
		t.Fatalf("Resign(db): %v", err)
	}
	second := colocated()
	if second == first {
		t.Fatalf("%s resigned db but still hosts it", first)
	}

	_ = c.nodes[second].Close()
	delete(c.nodes, second)
	third := colocated()
	if third == second {
		t.Fatalf("closed node %s still hosts db", second)
	}
}

func TestDependencyConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		svcs []core.ServiceConfig
		want string
	}{
		{"unknown", []core.ServiceConfig{{Name: "app", DependsOn: "db"}}, `depends on "db", which this node does not provide`},
		{"self", []core.ServiceConfig{{Name: "app", DependsOn: "app"}}, "depends on itself"},
		{"cycle", []core.ServiceConfig{{Name: "a", DependsOn: "b"}, {Name: "b", DependsOn: "a"}}, "cycle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := core.DefaultConfig()
			cfg.NodeID = "n"
			cfg.Services = tc.svcs
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
