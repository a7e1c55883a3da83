package proxy

import (
	"testing"

	"github.com/concordha/concord/internal/leakcheck"
)

func TestMain(m *testing.M) {
	leakcheck.Main(m)
}
