package peer

import (
	"context"
	"fmt"
	"testing"

	"github.com/concordha/concord/core"
)

// BenchmarkSendCheckpoint: an authenticated checkpoint over loopback HTTP,
// spooled to disk and MAC-checked on the receiving side before Apply
// (which discards it). MB/s is the transfer rate of a checkpoint.
func BenchmarkSendCheckpoint(b *testing.B) {
	for _, size := range []int64{64 << 10, 16 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			f := newFixture(b, nil)
			b.SetBytes(size)
			b.ResetTimer()
			for i := range b.N {
				h := Header{Service: "db", Stamp: core.Stamp{Epoch: 1, Token: 1, Seq: int64(i + 1)}}
				if err := f.cli.SendCheckpoint(context.Background(), f.addr, h, newGenReader(size)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
