package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/backends/memory"
	"github.com/concordha/concord/client"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/leakcheck"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

func put(t *testing.T, st core.Store, key string, v any) core.KV {
	t.Helper()
	b, _ := json.Marshal(v)
	ctx := context.Background()
	if kv, err := st.Get(ctx, key); err == nil {
		kv, err = st.CompareAndSwap(ctx, key, b, kv.Version)
		if err != nil {
			t.Fatal(err)
		}
		return kv
	}
	kv, err := st.Create(ctx, key, b)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// TestPrimaryTrustsOnlyTheCurrentPrimarysEndpoint: an endpoint record is
// used only while its token is the primary record's revision and the
// primary's session is live.
func TestPrimaryTrustsOnlyTheCurrentPrimarysEndpoint(t *testing.T) {
	srv := memory.New(memory.Options{})
	defer srv.Close()
	st := srv.Client("t")
	ctx := context.Background()
	r, err := client.New(st, "concord/")
	if err != nil {
		t.Fatal(err)
	}
	noPrimary := func(why string) {
		t.Helper()
		_, err := r.Primary(ctx, "db")
		if !errors.Is(err, client.ErrNoPrimary) || !strings.Contains(err.Error(), why) {
			t.Fatalf("Primary = %v, want ErrNoPrimary saying %q", err, why)
		}
	}
	noPrimary("never had a primary")
	sess, err := st.NewSession(ctx, core.SessionOptions{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close(ctx)
	b, _ := json.Marshal(core.MemberRecord{Node: "a", Session: sess.ID(), Services: map[string]core.ServiceRecord{"db": {}}})
	if _, err := sess.Register(ctx, "concord/members/a", b); err != nil {
		t.Fatal(err)
	}
	prim := put(t, st, "concord/primary/db", core.PrimaryRecord{Node: "a", Session: sess.ID(), Epoch: 3})
	noPrimary("has not published its endpoint yet")
	put(t, st, "concord/endpoints/db", core.EndpointRecord{Node: "a", Session: sess.ID(), Address: "10.0.0.1:5432", Epoch: 3, Token: prim.Revision - 1})
	noPrimary("the record is of token")
	put(t, st, "concord/endpoints/db", core.EndpointRecord{Node: "a", Session: sess.ID(), Address: "10.0.0.1:5432", Epoch: 3, Token: prim.Revision})
	ep, err := r.Primary(ctx, "db")
	if err != nil || ep.Address != "10.0.0.1:5432" || ep.Token != prim.Revision {
		t.Fatalf("Primary = %+v, %v", ep, err)
	}
	if err := sess.Close(ctx); err != nil {
		t.Fatal(err)
	}
	noPrimary("has left")
	if _, err := r.Primary(ctx, "bad/name"); !errors.Is(err, core.ErrInvalidArgument) {
		t.Fatalf("Primary of a bad name: %v", err)
	}
}
