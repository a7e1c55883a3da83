// Package netfault puts a cuttable TCP link between a client and a server,
// so that demos, tests and benchmarks can take a process off the network
// as a crash does: its connections are closed at once, and no new one gets
// through until the link is restored. The server learns nothing else: a
// session the process held lives on until its TTL runs out.
package netfault

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Link listens on a loopback port and forwards every connection to a
// target address until it is cut.
type Link struct {
	target string
	ln     net.Listener

	mu     sync.Mutex
	cut    bool
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// New starts a link to target (host:port) on a free loopback port.
func New(target string) (*Link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &Link{target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

// Addr is the address clients dial instead of the target.
func (l *Link) Addr() string { return l.ln.Addr().String() }

// Cut drops every connection at once and refuses new ones until Restore.
func (l *Link) Cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = true
	for c := range l.conns {
		_ = c.Close()
	}
}

// Restore lets connections through again.
func (l *Link) Restore() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = false
}

// Close stops the link and waits for its goroutines. It is idempotent.
func (l *Link) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	l.Cut()
	err := l.ln.Close()
	l.wg.Wait()
	return err
}

// track registers c; it returns false (and closes c) when the link is cut
// or closed.
func (l *Link) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut || l.closed {
		_ = c.Close()
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *Link) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	_ = c.Close()
}

func (l *Link) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // e.g. out of file descriptors: do not spin
			continue
		}
		if !l.track(c) {
			continue
		}
		l.wg.Add(1)
		go l.serve(c)
	}
}

func (l *Link) serve(c net.Conn) {
	defer l.wg.Done()
	defer l.untrack(c)
	up, err := net.Dial("tcp", l.target)
	if err != nil {
		return
	}
	if !l.track(up) {
		return
	}
	defer l.untrack(up)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	// One direction ended: end both, and wait for the other copy.
	_ = c.Close()
	_ = up.Close()
	<-done
}
