package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"

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
	if err := sess.Close(ctx); err != nil {
		t.Fatal(err)
	}
	noPrimary("has left")
	if _, err := r.Primary(ctx, "bad/name"); !errors.Is(err, core.ErrInvalidArgument) {
		t.Fatalf("Primary of a bad name: %v", err)
	}
}
