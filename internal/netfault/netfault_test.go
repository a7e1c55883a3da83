package netfault

import (
	"bufio"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echo serves lines back until the listener closes.
func echo(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln
}

func roundTrip(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	_, err = bufio.NewReader(c).ReadString('\n')
	return err
}

func TestLinkForwardsCutsAndRestores(t *testing.T) {
	ln := echo(t)
	defer ln.Close()
	l, err := New(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	if err := roundTrip(l.Addr()); err != nil {
		t.Fatalf("through an intact link: %v", err)
	}

	// An open connection dies when the link is cut.
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("a\n")); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	l.Cut()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	_, _ = c.Write([]byte("b\n"))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("a connection survived the cut")
	}
	if err := roundTrip(l.Addr()); err == nil {
		t.Fatal("a new connection got through a cut link")
	}

	l.Restore()
	if err := roundTrip(l.Addr()); err != nil {
		t.Fatalf("after Restore: %v", err)
	}
}
