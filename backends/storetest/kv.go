package storetest

import (
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/concordha/concord/core"
)

var kvChecks = []namedCheck{
	{"GetMissing", checkGetMissing},
	{"CreateThenGet", checkCreateThenGet},
	{"CreateExisting", checkCreateExisting},
	{"ValueIsOpaque", checkValueIsOpaque},
	{"CASRightVersion", checkCASRightVersion},
	{"CASStaleVersion", checkCASStaleVersion},
	{"CASMissingKey", checkCASMissingKey},
	{"RevisionsAreStoreWide", checkRevisionsAreStoreWide},
	{"FencingChain", checkFencingChain},
	{"ConcurrentCAS", checkConcurrentCAS},
}

func checkGetMissing(c *check) {
	st := c.client()
	key := c.key("missing")
	kv, err := st.Get(c.ctx, key)
	if !errors.Is(err, core.ErrNotFound) {
		c.t.Fatalf("Get(%q) of a key never written: err = %v (record %s), want ErrNotFound", key, err, fmtKV(kv))
	}
}

func checkCreateThenGet(c *check) {
	st, other := c.client(), c.client()
	key := c.key("k")
	created := c.mustCreate(st, key, "v1")
	c.wantKV("Create", created, key, "v1")
	c.sameKV(fmt.Sprintf("Get(%q) after Create, same client", key), c.mustGet(st, key), created)
	c.sameKV(fmt.Sprintf("Get(%q) after Create, second client", key), c.mustGet(other, key), created)
}

func checkCreateExisting(c *check) {
	st, other := c.client(), c.client()
	key := c.key("k")
	created := c.mustCreate(st, key, "first")
	for _, cl := range []core.Store{st, other} {
		if _, err := cl.Create(c.ctx, key, []byte("second")); !errors.Is(err, core.ErrExists) {
			c.t.Fatalf("Create(%q) of an existing key: err = %v, want ErrExists", key, err)
		}
	}
	c.sameKV(fmt.Sprintf("Get(%q) after a refused Create", key), c.mustGet(st, key), created)
	snap := c.mustList(other, c.root)
	if snap.Revision != created.Revision {
		c.t.Errorf("List(%q) after a refused Create: Revision = %d, want %d (a refused Create writes nothing)",
			c.root, snap.Revision, created.Revision)
	}
}

func checkValueIsOpaque(c *check) {
	st := c.client()
	values := map[string]string{
		"binary": "\x00\xff\x01 \n\x00",
		"empty":  "",
		"utf8":   "primär ✓",
	}
	for name, v := range values {
		key := c.key(name)
		c.wantKV("Create", c.mustCreate(st, key, v), key, v)
		c.wantKV("Get", c.mustGet(st, key), key, v)
	}
}

func checkCASRightVersion(c *check) {
	st, other := c.client(), c.client()
	key := c.key("k")
	prev := c.mustCreate(st, key, "v1")
	for i := 2; i <= 4; i++ {
		v := "v" + strconv.Itoa(i)
		next := c.mustCAS(st, key, v, prev.Version)
		c.wantKV("CompareAndSwap", next, key, v)
		if next.Version == prev.Version {
			c.t.Errorf("CompareAndSwap(%q): Version stayed %d, want it to change on every write", key, next.Version)
		}
		if next.Revision <= prev.Revision {
			c.t.Errorf("CompareAndSwap(%q): Revision %d, want > %d of the previous write", key, next.Revision, prev.Revision)
		}
		c.sameKV(fmt.Sprintf("Get(%q) from a second client after CAS", key), c.mustGet(other, key), next)
		prev = next
	}
}

func checkCASStaleVersion(c *check) {
	st, other := c.client(), c.client()
	key := c.key("k")
	first := c.mustCreate(st, key, "v1")
	current := c.mustCAS(st, key, "v2", first.Version)
	for _, cl := range []core.Store{st, other} {
		_, err := cl.CompareAndSwap(c.ctx, key, []byte("stale"), first.Version)
		if !errors.Is(err, core.ErrConflict) {
			c.t.Fatalf("CompareAndSwap(%q) with stale version %d (current %d): err = %v, want ErrConflict",
				key, first.Version, current.Version, err)
		}
	}
	c.sameKV(fmt.Sprintf("Get(%q) after a failed CAS", key), c.mustGet(other, key), current)
	if snap := c.mustList(other, c.root); snap.Revision != current.Revision {
		c.t.Errorf("List(%q) after a failed CAS: Revision = %d, want %d (a failed CAS writes nothing)",
			c.root, snap.Revision, current.Revision)
	}
}

func checkCASMissingKey(c *check) {
	st := c.client()
	key := c.key("missing")
	for _, version := range []int64{0, 1, 2} {
		_, err := st.CompareAndSwap(c.ctx, key, []byte("v"), version)
		if !errors.Is(err, core.ErrNotFound) {
			c.t.Fatalf("CompareAndSwap(%q, version %d) of a missing key: err = %v, want ErrNotFound", key, version, err)
		}
	}
	if _, err := st.Get(c.ctx, key); !errors.Is(err, core.ErrNotFound) {
		c.t.Fatalf("Get(%q) after a failed CAS of a missing key: err = %v, want ErrNotFound (CAS must not create)", key, err)
	}
}

func checkRevisionsAreStoreWide(c *check) {
	st, other := c.client(), c.client()
	a, b := c.key("a"), c.key("b")
	ka := c.mustCreate(st, a, "1")
	kb := c.mustCreate(other, b, "1")
	if kb.Revision <= ka.Revision {
		c.t.Errorf("Create(%q) after Create(%q): Revision %d, want > %d", b, a, kb.Revision, ka.Revision)
	}
	ka2 := c.mustCAS(st, a, "2", ka.Version)
	if ka2.Revision <= kb.Revision {
		c.t.Errorf("CompareAndSwap(%q) after Create(%q): Revision %d, want > %d", a, b, ka2.Revision, kb.Revision)
	}
	kb2 := c.mustCAS(other, b, "2", kb.Version)
	if kb2.Revision <= ka2.Revision {
		c.t.Errorf("CompareAndSwap(%q) after CompareAndSwap(%q): Revision %d, want > %d", b, a, kb2.Revision, ka2.Revision)
	}
	elsewhere := c.mustCreate(other, c.key("elsewhere/c"), "1")
	if elsewhere.Revision <= kb2.Revision {
		c.t.Errorf("Create under another prefix: Revision %d, want > %d", elsewhere.Revision, kb2.Revision)
	}
}

// checkFencingChain holds a lease-like record and renews it by CAS while
// another client writes elsewhere; the revisions the holder gets (its
// fencing tokens) must strictly increase, and so must the versions differ.
func checkFencingChain(c *check) {
	holder, noise := c.client(), c.client()
	key := c.key("epoch")
	kv := c.mustCreate(holder, key, "0")
	tokens := []int64{kv.Revision}
	versions := map[int64]bool{kv.Version: true}
	noiseKV := c.mustCreate(noise, c.key("noise"), "0")
	for i := 1; i <= 20; i++ {
		noiseKV = c.mustCAS(noise, c.key("noise"), strconv.Itoa(i), noiseKV.Version)
		if noiseKV.Revision <= kv.Revision {
			c.t.Errorf("write to %q after token %d: Revision %d, want greater", c.key("noise"), kv.Revision, noiseKV.Revision)
		}
		next := c.mustCAS(holder, key, strconv.Itoa(i), kv.Version)
		if next.Revision <= kv.Revision || next.Revision <= noiseKV.Revision {
			c.t.Fatalf("fencing token %d of %q: Revision %d, want > %d (previous token) and > %d (last write anywhere)",
				i, key, next.Revision, kv.Revision, noiseKV.Revision)
		}
		if versions[next.Version] {
			c.t.Fatalf("CompareAndSwap %d of %q returned Version %d, already seen for an earlier value", i, key, next.Version)
		}
		versions[next.Version] = true
		tokens = append(tokens, next.Revision)
		kv = next
	}
	c.t.Logf("fencing tokens of %q: %v", key, tokens)
}

// checkConcurrentCAS runs many read-modify-write loops against one counter.
// Optimistic concurrency must lose no update: the final value equals the
// number of successful CAS calls, and no two successes produced the same
// version.
func checkConcurrentCAS(c *check) {
	const workers, perWorker = 8, 25
	key := c.key("counter")
	c.mustCreate(c.client(), key, "0")
	stores := make([]core.Store, workers)
	for i := range stores {
		stores[i] = c.client()
	}
	var (
		mu        sync.Mutex
		versions  = map[int64]int{}
		successes int
		wg        sync.WaitGroup
	)
	for w := range workers {
		wg.Add(1)
		go func(st core.Store) {
			defer wg.Done()
			for done := 0; done < perWorker; {
				kv, err := st.Get(c.ctx, key)
				if err != nil {
					c.t.Errorf("worker %d: Get(%q): %v", w, key, err)
					return
				}
				n, err := strconv.Atoi(string(kv.Value))
				if err != nil {
					c.t.Errorf("worker %d: %q holds %q, not a number", w, key, kv.Value)
					return
				}
				next, err := st.CompareAndSwap(c.ctx, key, []byte(strconv.Itoa(n+1)), kv.Version)
				switch {
				case errors.Is(err, core.ErrConflict):
					continue // someone else won this round; read again
				case err != nil:
					c.t.Errorf("worker %d: CompareAndSwap(%q, version %d): %v", w, key, kv.Version, err)
					return
				}
				done++
				mu.Lock()
				successes++
				versions[next.Version]++
				mu.Unlock()
			}
		}(stores[w])
	}
	wg.Wait()
	if c.t.Failed() {
		return
	}
	final := c.mustGet(c.client(), key)
	if got, want := string(final.Value), strconv.Itoa(successes); got != want {
		c.t.Fatalf("%q = %s after %d successful CAS increments: lost updates", key, got, successes)
	}
	if successes != workers*perWorker {
		c.t.Errorf("%d successful CAS, want %d", successes, workers*perWorker)
	}
	for v, n := range versions {
		if n > 1 {
			c.t.Errorf("Version %d of %q was returned by %d successful CAS calls, want each success to produce its own", v, key, n)
		}
	}
}
