//go:build integration

package integration

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/concordha/concord/backends/consul"
	"github.com/concordha/concord/backends/storetest"
	"github.com/concordha/concord/core"
)

// consulRootToken is the initial management token of the agent with
// ACLs (a fixed UUID: the agent is thrown away after the test).
const consulRootToken = "6a1c3f0e-2d4b-4c8e-9f7a-5b3e1d2c4a6f"

// The policies the tests give their tokens: what concord needs (every
// key, and sessions on the agent's node), and a read-only one.
const (
	consulWriteRules = `key_prefix "" { policy = "write" }
session_prefix "" { policy = "write" }`
	consulReadRules = `key_prefix "" { policy = "read" }
session_prefix "" { policy = "write" }`
	// consulPartRules may read some keys under acl/ but not all.
	consulPartRules = `key_prefix "acl/a" { policy = "read" }`
)

// startConsulACL starts a dev agent whose ACLs deny by default.
func startConsulACL(t *testing.T) *container {
	t.Helper()
	return startConsulAgent(t, "-hcl", fmt.Sprintf(
		`acl { enabled = true, default_policy = "deny", tokens { initial_management = %q } }`, consulRootToken))
}

// consulToken creates a token with a policy of rules, through admin (a
// Store with the management token), and returns its secret.
func consulToken(t *testing.T, admin *consul.Store, name, rules string) string {
	t.Helper()
	acl := admin.Client().ACL()
	var secret string
	// The agent creates its management token once it leads: retry while
	// it does not know it yet.
	storetest.Eventually(t, 30*time.Second, "a token with policy "+name, func() error {
		if _, _, err := acl.PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil); err != nil {
			if _, _, rerr := acl.PolicyReadByName(name, nil); rerr != nil {
				return fmt.Errorf("create policy: %v", err)
			}
		}
		tok, _, err := acl.TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{Name: name}}}, nil)
		if err != nil {
			return fmt.Errorf("create token: %v", err)
		}
		secret = tok.SecretID
		return nil
	})
	return secret
}

// TestConsulACL: with ACLs that deny by default, a token with concord's
// policy passes the whole suite; no token, an unknown token, or a token
// that may only read is refused with ErrDenied, which no retry mends.
func TestConsulACL(t *testing.T) {
	agent := startConsulACL(t)
	eps := consulEndpoints([]*container{agent})
	admin := newConsul(t, consul.Config{Endpoints: eps, Token: consulRootToken})
	writer := consulToken(t, admin, "concord", consulWriteRules)
	reader := consulToken(t, admin, "concord-read", consulReadRules)
	part := consulToken(t, admin, "concord-part", consulPartRules)

	t.Run("Conformance", func(t *testing.T) {
		storetest.Run(t, storetest.Factory{
			New:  func(t *testing.T) core.Store { return newConsul(t, consul.Config{Endpoints: eps, Token: writer}) },
			TTL:  consulTTL,
			Root: "storetest/",
		})
	})

	ctx := testCtx(t, time.Minute)
	existing, err := admin.Create(ctx, "acl/k", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Create(ctx, "acl/a", []byte("v")); err != nil {
		t.Fatal(err)
	}
	denied := func(t *testing.T, call string, err error) {
		t.Helper()
		if !errors.Is(err, core.ErrDenied) {
			t.Errorf("%s: %v, want ErrDenied", call, err)
		}
	}

	t.Run("UnknownToken", func(t *testing.T) {
		st, err := consul.New(consul.Config{Endpoints: eps, Token: "0b5e3c1a-9d7f-4e2b-8a6c-1f3d5e7a9b0c"})
		if err == nil {
			_ = st.Close()
		}
		denied(t, "New with a token Consul does not know", err)
	})

	t.Run("NoToken", func(t *testing.T) {
		st := newConsul(t, consul.Config{Endpoints: eps})
		_, err := st.Get(ctx, existing.Key)
		denied(t, "Get", err)
		_, err = st.Create(ctx, "acl/new", []byte("v"))
		denied(t, "Create", err)
		_, err = st.CompareAndSwap(ctx, existing.Key, []byte("v2"), existing.Version)
		denied(t, "CompareAndSwap", err)
		// Consul answers a prefix whose keys the token may read none of
		// as it answers an empty one (see backends/consul).
		if snap, err := st.List(ctx, "acl/"); !errors.Is(err, core.ErrDenied) && (err != nil || len(snap.KVs) != 0) {
			t.Errorf("List of a prefix none of whose keys the token may read = %v, %v; want ErrDenied or no keys", snap.KVs, err)
		}
		s, err := st.NewSession(ctx, core.SessionOptions{TTL: consulTTL})
		if err == nil {
			_ = s.Close(ctx)
		}
		denied(t, "NewSession", err)
	})

	t.Run("PartialToken", func(t *testing.T) {
		st := newConsul(t, consul.Config{Endpoints: eps, Token: part})
		_, err := st.List(ctx, "acl/")
		denied(t, "List of a prefix some of whose keys the token may not read", err)
		_, err = st.Watch(ctx, "acl/")
		denied(t, "Watch of a prefix some of whose keys the token may not read", err)
		if snap, err := st.List(ctx, "acl/a"); err != nil || len(snap.KVs) != 1 {
			t.Errorf("List(acl/a) with a token that may read it = %v, %v; want one key", snap.KVs, err)
		}
	})

	t.Run("ReadOnlyToken", func(t *testing.T) {
		st := newConsul(t, consul.Config{Endpoints: eps, Token: reader})
		if _, err := st.Get(ctx, existing.Key); err != nil {
			t.Errorf("Get with a token that may read: %v", err)
		}
		_, err := st.Create(ctx, "acl/new", []byte("v"))
		denied(t, "Create", err)
		_, err = st.CompareAndSwap(ctx, existing.Key, []byte("v2"), existing.Version)
		denied(t, "CompareAndSwap", err)
		_, err = st.Txn(ctx, []core.Op{
			{Kind: core.OpGet, Key: existing.Key},
			{Kind: core.OpCreate, Key: "acl/txn", Value: []byte("v")},
		})
		denied(t, "Txn with a write", err)
		s, err := st.NewSession(ctx, core.SessionOptions{TTL: consulTTL})
		if err != nil {
			t.Fatalf("NewSession with a token that may write sessions: %v", err)
		}
		defer s.Close(ctx)
		_, err = s.Register(ctx, "acl/member", []byte("v"))
		denied(t, "Register", err)
		if got, err := admin.Get(ctx, existing.Key); err != nil || string(got.Value) != "v" {
			t.Errorf("Get(%q) after the refused writes = %+v, %v; want it unchanged", existing.Key, got, err)
		}
	})
}
