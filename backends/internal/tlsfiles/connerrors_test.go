package tlsfiles

import (
	"errors"
	"strings"
	"testing"
)

// TestConnErrors: a vague error (the server closed the connection) does
// not hide a clear one of an earlier attempt; a working connection
// clears its address.
func TestConnErrors(t *testing.T) {
	var c ConnErrors
	if err := c.Err(); err != nil {
		t.Fatalf("empty: %v", err)
	}
	clear1 := errors.New("remote error: tls: certificate required")
	c.Fail("a:1", clear1, false)
	c.Fail("a:1", errors.New("broken pipe"), true)
	c.Fail("b:2", errors.New("EOF"), true)
	if err := c.Err(); !errors.Is(err, clear1) || !strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "broken pipe") {
		t.Errorf("Err() = %v, want the clear error of a:1 and the vague one of b:2", err)
	}
	clear2 := errors.New("x509: certificate signed by unknown authority")
	c.Fail("b:2", clear2, false)
	c.OK("a:1")
	if err := c.Err(); errors.Is(err, clear1) || !errors.Is(err, clear2) || strings.Contains(err.Error(), "EOF") {
		t.Errorf("Err() = %v, want only the clear error of b:2", err)
	}
	c.OK("b:2")
	if err := c.Err(); err != nil {
		t.Errorf("Err() after every address worked = %v, want nil", err)
	}
	var none *ConnErrors
	if err := none.Err(); err != nil {
		t.Errorf("nil ConnErrors: %v", err)
	}
}
