package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/internal/leakcheck"
)

// TestMain checks that no goroutine outlives the tests.
func TestMain(m *testing.M) { leakcheck.Main(m) }

// TestDemo runs the demo as a newcomer would and checks its timeline.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := runDemo(ctx, &out, demoOptions{nodes: 3, services: 2, ttl: time.Second})
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	for _, want := range []string{"elected:", "promotes", "crash:", "expires", "failover:", "handover:", "done"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the timeline lacks %q:\n%s", want, out.String())
		}
	}
}

func TestDemoRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{{"demo", "--nodes", "2"}, {"demo", "--services", "1"}, {"demo", "--ttl", "1ms"}, {"demo", "--ttl", "1500ms"}} {
		cmd := rootCmd()
		cmd.SetArgs(args)
		cmd.SetOut(&bytes.Buffer{})
		if err := cmd.Execute(); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
