package peer

import (
	"container/heap"
	"crypto/hmac"
	"crypto/sha256"
	"hash"
	"net/http"
	"strconv"
	"sync"
)

// PathPrefix is where a Server expects to be mounted.
const PathPrefix = "/v1/peer/"

// Header names of the protocol (see the package documentation).
const (
	hFrom    = "Concord-From"
	hTime    = "Concord-Time"
	hNonce   = "Concord-Nonce"
	hAuth    = "Concord-Auth"
	hService = "Concord-Service"
	hEpoch   = "Concord-Epoch"
	hToken   = "Concord-Token"
	hSeq     = "Concord-Seq"
	hBodyMAC = "Concord-Body-MAC"
	hError   = "Concord-Error"
)

// macDomain starts every canonical request, so that a MAC of this
// protocol cannot be taken for one of another use of the same secret.
const macDomain = "concord-peer-v1"

// MinSecretLen is the shortest cluster secret accepted, in bytes.
const MinSecretLen = 16

// nonceLen is the length of a request nonce, in bytes.
const nonceLen = 16

// signedHeaders are the headers that the request MAC covers, after the
// domain, method and path, in this order. A receiver must read a request
// only through them (and the path and body), as a header outside this
// list could have been added on the way.
var signedHeaders = [...]string{hFrom, hTime, hNonce, hService, hEpoch, hToken, hSeq}

// requestMAC returns the HMAC-SHA256 with secret of the canonical form of
// a request: each of the domain, method, path and signedHeaders' values
// as "<length>:<value>\n", so that no two requests share a canonical form.
func requestMAC(secret []byte, method, path string, h http.Header) []byte {
	m := hmac.New(sha256.New, secret)
	buf := make([]byte, 0, 256)
	field := func(s string) {
		buf = strconv.AppendInt(buf[:0], int64(len(s)), 10)
		buf = append(buf, ':')
		buf = append(buf, s...)
		buf = append(buf, '\n')
		m.Write(buf)
	}
	field(macDomain)
	field(method)
	field(path)
	for _, k := range signedHeaders {
		field(h.Get(k))
	}
	return m.Sum(nil)
}

// newBodyMAC returns the hash that computes a body's MAC: HMAC-SHA256 with
// secret of the request MAC, then the body. Chaining the request MAC ties
// the body to its request, so a body cannot be moved to another one.
func newBodyMAC(secret, reqMAC []byte) hash.Hash {
	m := hmac.New(sha256.New, secret)
	m.Write(reqMAC)
	return m
}

// replayCache remembers the nonces of recent requests, to refuse a replay
// while its timestamp is still inside the clock-skew window. It holds at
// most max nonces: to make room, it forgets the one with the oldest
// timestamp and from then on refuses every request stamped no later than
// that one (floor), since it could be the replay of a forgotten nonce.
// Nonces whose timestamp has left the window are forgotten the same way;
// a request that old is refused by the window anyway. Under normal load,
// when the cache never fills, floor only refuses requests that the window
// refuses too.
type replayCache struct {
	mu     sync.Mutex
	window int64 // nanoseconds
	max    int
	seen   map[[nonceLen]byte]struct{}
	byTime nonceHeap
	floor  int64 // refuse requests stamped at or before floor (Unix ns)
	primed bool  // floor is set
}

func newReplayCache(window int64, max int) *replayCache {
	return &replayCache{window: window, max: max, seen: make(map[[nonceLen]byte]struct{})}
}

// admit records a request's nonce and timestamp at (Unix ns) at time now.
// It returns false if the request must be refused as a possible replay.
func (c *replayCache) admit(nonce [nonceLen]byte, at, now int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.byTime) > 0 && c.byTime[0].at < now-c.window {
		c.forgetOldest()
	}
	if c.primed && at <= c.floor {
		return false
	}
	if _, ok := c.seen[nonce]; ok {
		return false
	}
	for len(c.byTime) >= c.max {
		c.forgetOldest()
		if at <= c.floor {
			return false
		}
	}
	c.seen[nonce] = struct{}{}
	heap.Push(&c.byTime, seenNonce{nonce: nonce, at: at})
	return true
}

func (c *replayCache) forgetOldest() {
	e := heap.Pop(&c.byTime).(seenNonce)
	delete(c.seen, e.nonce)
	if !c.primed || e.at > c.floor {
		c.floor, c.primed = e.at, true
	}
}

type seenNonce struct {
	nonce [nonceLen]byte
	at    int64
}

// nonceHeap is a min-heap of nonces by timestamp.
type nonceHeap []seenNonce

func (h nonceHeap) Len() int           { return len(h) }
func (h nonceHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h nonceHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *nonceHeap) Push(x any)        { *h = append(*h, x.(seenNonce)) }
func (h *nonceHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
