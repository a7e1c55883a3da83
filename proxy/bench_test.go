package proxy

import (
	"net"
	"testing"
	"time"
)

// BenchmarkProxyOverhead compares the round trip of a small message
// through the proxy with the same round trip straight to the primary.
func BenchmarkProxyOverhead(b *testing.B) {
	a := startEcho(b, "")
	r := startProxy(b, waitFor)
	r.use(b, a.endpoint("n1", 1))

	direct, err := net.Dial("tcp", a.addr())
	if err != nil {
		b.Fatal(err)
	}
	defer direct.Close()
	proxied := r.dial(b)
	msg := make([]byte, 64)
	measure := func(c net.Conn) time.Duration {
		start := time.Now()
		for range b.N {
			if err := echo(c, msg); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}
	b.ResetTimer()
	d := measure(direct)
	p := measure(proxied)
	b.ReportMetric(float64(d.Nanoseconds())/1e3/float64(b.N), "direct-µs/rt")
	b.ReportMetric(float64(p.Nanoseconds())/1e3/float64(b.N), "proxy-µs/rt")
}
