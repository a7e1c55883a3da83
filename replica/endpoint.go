package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/concordha/concord/core"
)

// publish writes the service's endpoint record for the primary tenure ev,
// guarded (where the store has transactions) by the primary record still
// holding ev's token. It reports whether the record is out, or needs no
// writing (a newer primary published already).
func (h *Host) publish(ctx context.Context, s *hosted, ev core.Event) bool {
	err := h.writeEndpoint(ctx, s, ev, 0)
	if err != nil {
		h.log.Debug("publishing the endpoint failed; retrying", "service", s.spec.Name, "err", err)
	}
	return err == nil
}

// writeEndpoint writes the endpoint record of the tenure ev, draining for
// drain if drain > 0. A newer primary's record is left alone (and counts
// as success).
func (h *Host) writeEndpoint(ctx context.Context, s *hosted, ev core.Event, drain time.Duration) error {
	name := s.spec.Name
	members, err := h.node.Members(ctx)
	if err != nil {
		return err
	}
	me, ok := members[h.cfg.Node]
	if !ok {
		return fmt.Errorf("%w: this node has no member record", core.ErrSessionLost)
	}
	key := h.cfg.Keys.Endpoint(name)
	rec := core.EndpointRecord{Node: h.cfg.Node, Session: me.Session, Address: s.spec.Endpoint, Epoch: ev.Epoch, Token: ev.Token}
	if drain > 0 {
		rec.Draining, rec.DrainMillis = true, drain.Milliseconds()
	}
	b, _ := json.Marshal(rec)
	op := core.Op{Kind: core.OpCreate, Key: key, Value: b, Guards: []core.Guard{{Key: h.cfg.Keys.Primary(name), Revision: ev.Token}}}
	kv, err := h.cfg.Store.Get(ctx, key)
	switch {
	case errors.Is(err, core.ErrNotFound):
	case err != nil:
		return err
	default:
		if old, derr := core.DecodeEndpoint(kv); derr == nil && old.Token > ev.Token {
			return nil // a newer primary's: ours is stale
		} else if derr == nil && old == rec {
			return nil
		}
		op.Kind, op.Version = core.OpCAS, kv.Version
	}
	if tx, ok := h.cfg.Store.(core.Txner); ok && tx.MaxTxnOps() > 0 {
		var res []core.OpResult
		if res, err = tx.Txn(ctx, []core.Op{op}); err == nil {
			err = res[0].Err
		}
	} else if op.Kind == core.OpCreate {
		_, err = h.cfg.Store.Create(ctx, key, b)
	} else {
		_, err = h.cfg.Store.CompareAndSwap(ctx, key, b, op.Version)
	}
	if err != nil {
		return err
	}
	if rec.Draining {
		h.log.Info("endpoint draining: clients are held off", "service", name, "address", rec.Address, "token", rec.Token, "drain", drain)
	} else {
		h.log.Info("endpoint published", "service", name, "address", rec.Address, "token", rec.Token)
	}
	return nil
}
