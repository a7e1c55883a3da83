package core

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Config configures a Node. Start from DefaultConfig, set NodeID and
// Services, and check it with Validate (Start does too).
type Config struct {
	// NodeID is this node's unique, stable ID (see ValidateName).
	NodeID string
	// Address is published in the member record for clients and peers.
	// Optional.
	Address string
	// Services this node provides.
	Services []ServiceConfig
	// Prefix is the key root of the cluster in the store. Nodes of one
	// cluster share it; it must end with "/".
	Prefix string
	// SessionTTL is how long the store keeps a silent node's session.
	// It bounds failure detection: a crashed primary is replaced about
	// SessionTTL after its last renewal.
	SessionTTL time.Duration
	// OpTimeout bounds each store operation.
	OpTimeout time.Duration
	// RetryMin and RetryMax bound the backoff between retries after store
	// errors, and between attempts to open a session.
	RetryMin, RetryMax time.Duration
	// ElectionTimeout is how long a disqualified node waits for the winner
	// to claim before it runs the election again.
	ElectionTimeout time.Duration
	// MaxInflight bounds the store operations (or Txns) in flight at once.
	MaxInflight int
	// Clock is where the node reads time. Nil means SystemClock().
	Clock Clock
	// Logger receives structured logs. Nil means slog.Default().
	Logger *slog.Logger
	// OnElection, if set, is called with the report of every election this
	// node finishes (for metrics and benchmarks). It runs on the node's
	// loop and must not block.
	OnElection func(ElectionReport)
}

// DefaultConfig returns a Config with every tunable set to its default.
func DefaultConfig() Config {
	return Config{
		Prefix:          "concord/",
		SessionTTL:      10 * time.Second,
		OpTimeout:       3 * time.Second,
		RetryMin:        50 * time.Millisecond,
		RetryMax:        2 * time.Second,
		ElectionTimeout: 20 * time.Second,
		MaxInflight:     64,
	}
}

// Validate checks the configuration and says which field is wrong and how
// to fix it.
func (c Config) Validate() error {
	var errs []error
	if err := ValidateName("NodeID", c.NodeID); err != nil {
		errs = append(errs, err)
	}
	if len(c.Services) == 0 {
		errs = append(errs, errors.New("config field Services is empty: a node must provide at least one service"))
	}
	seen := map[string]bool{}
	for i, s := range c.Services {
		if err := ValidateName(fmt.Sprintf("Services[%d].Name", i), s.Name); err != nil {
			errs = append(errs, err)
		}
		if seen[s.Name] {
			errs = append(errs, fmt.Errorf("Services[%d].Name %q is declared twice: declare each service once", i, s.Name))
		}
		seen[s.Name] = true
	}
	if err := checkDependencies(c.Services); err != nil {
		errs = append(errs, err)
	}
	if err := validatePrefix(c.Prefix); err != nil {
		errs = append(errs, fmt.Errorf("config field Prefix: %w", err))
	}
	if c.SessionTTL <= 0 {
		errs = append(errs, fmt.Errorf("SessionTTL is %v: it must be positive (10s is the default)", c.SessionTTL))
	}
	if c.OpTimeout <= 0 {
		errs = append(errs, fmt.Errorf("OpTimeout is %v: it must be positive", c.OpTimeout))
	} else if c.SessionTTL > 0 && c.OpTimeout >= c.SessionTTL {
		errs = append(errs, fmt.Errorf("OpTimeout %v is not shorter than SessionTTL %v: a store call could outlast the session; make OpTimeout at most a third of SessionTTL", c.OpTimeout, c.SessionTTL))
	}
	if c.RetryMin <= 0 || c.RetryMax < c.RetryMin {
		errs = append(errs, fmt.Errorf("RetryMin %v and RetryMax %v: need 0 < RetryMin <= RetryMax", c.RetryMin, c.RetryMax))
	}
	if c.ElectionTimeout <= 0 {
		errs = append(errs, fmt.Errorf("ElectionTimeout is %v: it must be positive", c.ElectionTimeout))
	}
	if c.MaxInflight <= 0 {
		errs = append(errs, fmt.Errorf("MaxInflight is %d: it must be positive", c.MaxInflight))
	}
	return errors.Join(errs...)
}

// checkDependencies checks the DependsOn fields of services: each names
// another declared service, and no chain of them loops.
func checkDependencies(svcs []ServiceConfig) error {
	byName := map[string]ServiceConfig{}
	for _, s := range svcs {
		byName[s.Name] = s
	}
	var errs []error
	for i, s := range svcs {
		if s.DependsOn == "" {
			continue
		}
		if s.DependsOn == s.Name {
			errs = append(errs, fmt.Errorf("Services[%d] (%q) depends on itself: remove depends_on or name another service", i, s.Name))
			continue
		}
		if _, ok := byName[s.DependsOn]; !ok {
			errs = append(errs, fmt.Errorf("Services[%d] (%q) depends on %q, which this node does not provide: a node must provide a service's dependency too, so that their primaries can share it", i, s.Name, s.DependsOn))
			continue
		}
		seen := map[string]bool{s.Name: true}
		for cur := byName[s.DependsOn]; ; cur = byName[cur.DependsOn] {
			if seen[cur.Name] {
				errs = append(errs, fmt.Errorf("Services[%d] (%q): depends_on forms a cycle through %q: dependencies must form a tree", i, s.Name, cur.Name))
				break
			}
			seen[cur.Name] = true
			if cur.DependsOn == "" || byName[cur.DependsOn].Name == "" {
				break
			}
		}
	}
	return errors.Join(errs...)
}
