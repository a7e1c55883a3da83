package peer

import (
	"bytes"
	"net/http"
	"testing"
)

func TestRequestMACCoversEveryField(t *testing.T) {
	secret := []byte("0123456789abcdef")
	base := http.Header{}
	for i, k := range signedHeaders {
		base.Set(k, string(rune('a'+i)))
	}
	want := requestMAC(secret, "POST", "/v1/peer/call/x", base)
	if !bytes.Equal(want, requestMAC(secret, "POST", "/v1/peer/call/x", base.Clone())) {
		t.Fatal("requestMAC is not deterministic")
	}
	for _, k := range signedHeaders {
		h := base.Clone()
		h.Set(k, h.Get(k)+"x")
		if bytes.Equal(want, requestMAC(secret, "POST", "/v1/peer/call/x", h)) {
			t.Errorf("changing %s leaves the MAC unchanged", k)
		}
	}
	if bytes.Equal(want, requestMAC(secret, "PUT", "/v1/peer/call/x", base)) {
		t.Error("changing the method leaves the MAC unchanged")
	}
	if bytes.Equal(want, requestMAC(secret, "POST", "/v1/peer/call/y", base)) {
		t.Error("changing the path leaves the MAC unchanged")
	}
	if bytes.Equal(want, requestMAC([]byte("0123456789abcdeF"), "POST", "/v1/peer/call/x", base)) {
		t.Error("changing the secret leaves the MAC unchanged")
	}
	// Moving a boundary between two fields must change the MAC.
	a, b := http.Header{}, http.Header{}
	a.Set(hFrom, "ab")
	a.Set(hTime, "c")
	b.Set(hFrom, "a")
	b.Set(hTime, "bc")
	if bytes.Equal(requestMAC(secret, "POST", "/p", a), requestMAC(secret, "POST", "/p", b)) {
		t.Error("fields 'ab','c' and 'a','bc' share a MAC")
	}
}

func nonce(b byte) (n [nonceLen]byte) {
	n[0] = b
	return n
}

func TestReplayCacheRefusesSeenNonces(t *testing.T) {
	c := newReplayCache(100, 10)
	if !c.admit(nonce(1), 1000, 1000) {
		t.Fatal("first use of a nonce refused")
	}
	if c.admit(nonce(1), 1000, 1001) {
		t.Fatal("replayed nonce admitted")
	}
	if !c.admit(nonce(2), 990, 1001) {
		t.Fatal("fresh nonce refused")
	}
}

func TestReplayCacheForgetsExpiredButRefusesTheirTimes(t *testing.T) {
	c := newReplayCache(100, 10)
	if !c.admit(nonce(1), 1000, 1000) {
		t.Fatal("first use refused")
	}
	// At 1200 the nonce stamped 1000 has left the window and is forgotten;
	// a replay of it must still be refused (here, by the floor), even if
	// the server's clock stepped back and the window alone would pass it.
	if !c.admit(nonce(2), 1150, 1200) {
		t.Fatal("fresh nonce refused")
	}
	if _, ok := c.seen[nonce(1)]; ok {
		t.Fatal("expired nonce still remembered")
	}
	if c.admit(nonce(1), 1000, 1050) {
		t.Fatal("replay of a forgotten nonce admitted")
	}
}

func TestReplayCacheBoundedEvictsOldestAndRaisesFloor(t *testing.T) {
	c := newReplayCache(1000, 3)
	for i, at := range []int64{30, 10, 20} {
		if !c.admit(nonce(byte(i)), at, 40) {
			t.Fatalf("nonce %d refused", i)
		}
	}
	// Full: admitting a fourth forgets the oldest (stamped 10).
	if !c.admit(nonce(9), 35, 40) {
		t.Fatal("fourth nonce refused")
	}
	if len(c.seen) != 3 || len(c.byTime) != 3 {
		t.Fatalf("cache holds %d/%d nonces, want 3", len(c.seen), len(c.byTime))
	}
	if c.admit(nonce(1), 10, 40) {
		t.Fatal("replay of the forgotten nonce admitted")
	}
	if c.admit(nonce(50), 10, 40) {
		t.Fatal("a request stamped at the floor admitted")
	}
	// Admitting another forgets the next oldest (20), which raises the
	// floor to 20.
	if c.admit(nonce(52), 15, 40) {
		t.Fatal("a request stamped before the next oldest admitted in a full cache")
	}
	if !c.admit(nonce(51), 25, 40) {
		t.Fatal("a request stamped after the floor refused")
	}
	// The remaining nonces are still refused as replays.
	for _, n := range [][nonceLen]byte{nonce(0), nonce(9), nonce(51)} {
		if c.admit(n, 36, 40) {
			t.Fatalf("replay of %v admitted", n[0])
		}
	}
}
