package storetest

import (
	"context"
	"errors"

	"github.com/concordha/concord/core"
)

var miscChecks = []namedCheck{
	{"CancelledContext", checkCancelledContext},
	{"EmptyKey", checkEmptyKey},
}

// checkCancelledContext: a call whose context has already ended returns
// an error wrapping ctx.Err().
func checkCancelledContext(c *check) {
	st := c.client()
	existing := c.mustCreate(st, c.key("k"), "v")
	live := c.session(st)
	ctx, cancel := context.WithCancel(c.ctx)
	cancel()
	want := func(call string, err error) {
		c.t.Helper()
		if !errors.Is(err, context.Canceled) {
			c.t.Errorf("%s with a cancelled context: err = %v, want one wrapping context.Canceled", call, err)
		}
	}
	_, err := st.Get(ctx, existing.Key)
	want("Get", err)
	_, err = st.List(ctx, c.root)
	want("List", err)
	_, err = st.Create(ctx, c.key("new"), []byte("v"))
	want("Create", err)
	_, err = st.CompareAndSwap(ctx, existing.Key, []byte("v2"), existing.Version)
	want("CompareAndSwap", err)
	ch, err := st.Watch(ctx, c.root)
	want("Watch", err)
	if err == nil && ch != nil {
		// Do not leave it behind: its context has ended, so it must close.
		c.drainClosed(ch, c.soon(), "Watch with a cancelled context")
	}
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: c.ttl})
	want("NewSession", err)
	if err == nil && s != nil {
		_ = s.Close(c.ctx)
	}
	_, err = live.Register(ctx, c.key("reg"), []byte("v"))
	want("Session.Register", err)
	if tx, ok := st.(core.Txner); ok {
		_, err = tx.Txn(ctx, []core.Op{{Kind: core.OpGet, Key: existing.Key}})
		want("Txn", err)
	}
	if exp, ok := st.(core.Expirer); ok {
		want("ExpireSession", exp.ExpireSession(ctx, live.ID()))
	}
	if d, ok := st.(core.Deleter); ok {
		want("DeleteVersion", d.DeleteVersion(ctx, existing.Key, existing.Version))
	}
	// The client is still usable with a live context.
	c.mustGet(st, existing.Key)
	if isClosed(live.Done()) {
		c.t.Errorf("session %q ended by a call with a cancelled context: %v", live.ID(), live.Err())
	}
}

func checkEmptyKey(c *check) {
	st := c.client()
	want := func(call string, err error) {
		c.t.Helper()
		if !errors.Is(err, core.ErrInvalidArgument) {
			c.t.Errorf("%s with an empty key: err = %v, want ErrInvalidArgument", call, err)
		}
	}
	_, err := st.Get(c.ctx, "")
	want("Get", err)
	_, err = st.Create(c.ctx, "", []byte("v"))
	want("Create", err)
	_, err = st.CompareAndSwap(c.ctx, "", []byte("v"), 1)
	want("CompareAndSwap", err)
	if d, ok := st.(core.Deleter); ok {
		want("DeleteVersion", d.DeleteVersion(c.ctx, "", 1))
	}
	s := c.session(st)
	_, err = s.Register(c.ctx, "", []byte("v"))
	want("Session.Register", err)
	if isClosed(s.Done()) {
		c.t.Errorf("session %q ended by a Register with an empty key: %v", s.ID(), s.Err())
	}
}
