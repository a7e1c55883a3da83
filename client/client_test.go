package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/backends/memory"
	"github.com/concordha/concord/client"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/leakcheck"
	"github.com/concordha/concord/internal/recordfix"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

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
	sess := recordfix.Join(t, st, "concord/", "a", "db")
	prim := recordfix.Put(t, st, "concord/primary/db", core.PrimaryRecord{Node: "a", Session: sess.ID(), Epoch: 3})
	noPrimary("has not published its endpoint yet")
	recordfix.Put(t, st, "concord/endpoints/db", core.EndpointRecord{Node: "a", Session: sess.ID(), Address: "10.0.0.1:5432", Epoch: 3, Token: prim.Revision - 1})
	noPrimary("the record is of token")
	recordfix.Put(t, st, "concord/endpoints/db", core.EndpointRecord{Node: "a", Session: sess.ID(), Address: "10.0.0.1:5432", Epoch: 3, Token: prim.Revision})
	ep, err := r.Primary(ctx, "db")
	if err != nil || ep.Address != "10.0.0.1:5432" || ep.Token != prim.Revision {
		t.Fatalf("Primary = %+v, %v", ep, err)
	}
	// A primary handing over holds its clients off, and Watch says whom
	// to drain and for how long.
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	updates, err := r.Watch(wctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	if u := <-updates; !u.Valid || u.Endpoint.Token != prim.Revision {
		t.Fatalf("first update %+v, want the valid endpoint", u)
	}
	recordfix.Put(t, st, "concord/endpoints/db", core.EndpointRecord{Node: "a", Session: sess.ID(), Address: "10.0.0.1:5432", Epoch: 3, Token: prim.Revision, Draining: true, DrainMillis: 1500})
	noPrimary("handing the service over")
	if u := <-updates; u.Valid || !u.Draining || u.Drain != 1500*time.Millisecond || u.Endpoint.Address != "10.0.0.1:5432" || u.Endpoint.Token != prim.Revision {
		t.Fatalf("update after the drain began: %+v", u)
	}
	if err := sess.Close(ctx); err != nil {
		t.Fatal(err)
	}
	noPrimary("has left")
	if _, err := r.Primary(ctx, "bad/name"); !errors.Is(err, core.ErrInvalidArgument) {
		t.Fatalf("Primary of a bad name: %v", err)
	}
}
