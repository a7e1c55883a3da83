package core

import (
	"encoding/json"
	"fmt"
	"sort"
)

// Records are JSON, readable with the store's own tools. Every decoding
// error names the key, so that garbage in the store is reported precisely.

// MemberRecord is a node's entry under members/, bound to its session.
type MemberRecord struct {
	Node     string                   `json:"node"`
	Session  string                   `json:"session"`
	Address  string                   `json:"address,omitempty"`
	Services map[string]ServiceRecord `json:"services"`
}

// ServiceRecord is what a member record says of one service the node
// provides.
type ServiceRecord struct {
	Priority int `json:"priority"`
	// DependsOn is the service whose primary this one's must share.
	DependsOn string `json:"depends_on,omitempty"`
}

// PrimaryRecord is the commit point of a service's elections. Its
// revision in the store is the primary's fencing token: the record is
// written only by claims and by resignations, never otherwise.
type PrimaryRecord struct {
	// Node and Session name the primary; both empty when the service has
	// no primary (after a resignation).
	Node    string `json:"node,omitempty"`
	Session string `json:"session,omitempty"`
	// Epoch is the membership epoch in which the record was written.
	Epoch int64 `json:"epoch"`
	// Resigned names the node that gave the service up, which ranks last
	// in the next election.
	Resigned string `json:"resigned,omitempty"`
}

// RosterRecord says which providers are secondaries and how fresh their
// state is. The primary writes it.
type RosterRecord struct {
	// Token is the fencing token of the primary that wrote the record.
	Token int64 `json:"token"`
	// Epoch is the membership epoch the writer saw.
	Epoch       int64            `json:"epoch"`
	Secondaries []SecondaryEntry `json:"secondaries"`
}

// SecondaryEntry is one secondary in a roster.
type SecondaryEntry struct {
	Node    string `json:"node"`
	Session string `json:"session"`
	// AckToken and AckSeq identify the newest checkpoint the secondary
	// acknowledged: the token of the primary that sent it, and its
	// sequence number.
	AckToken int64 `json:"ack_token,omitempty"`
	AckSeq   int64 `json:"ack_seq,omitempty"`
}

// Find returns the index of node's entry, or -1.
func (r *RosterRecord) Find(node string) int {
	for i, s := range r.Secondaries {
		if s.Node == node {
			return i
		}
	}
	return -1
}

func (r *RosterRecord) sortEntries() {
	sort.Slice(r.Secondaries, func(i, j int) bool { return r.Secondaries[i].Node < r.Secondaries[j].Node })
}

// EndpointRecord is where a service's primary serves its clients,
// published by that primary once its service is promoted (steps 408 and
// 412: connections are mapped to the new primary). It is usable only
// while Token is the revision of the service's primary record and
// Session is a live member's: a reader checks both, so a record left by
// a former primary is never followed.
type EndpointRecord struct {
	Node    string `json:"node"`
	Session string `json:"session"`
	Address string `json:"address"`
	Epoch   int64  `json:"epoch"`
	Token   int64  `json:"token"`
	// Draining is set by the primary when it hands the service over (a
	// switchover): readers must not open new connections to Address, and
	// should let the ones they have finish within DrainMillis, after
	// which the primary takes its last checkpoint and resigns. The record
	// of the next primary replaces this one.
	Draining    bool  `json:"draining,omitempty"`
	DrainMillis int64 `json:"drain_ms,omitempty"`
}

// DecodeEndpoint decodes and checks an endpoint record; errors wrap
// ErrBadRecord and name the key.
func DecodeEndpoint(kv KV) (EndpointRecord, error) {
	var e EndpointRecord
	if err := decodeJSON(kv.Key, kv.Value, &e); err != nil {
		return e, err
	}
	if e.Node == "" || e.Address == "" || e.Token <= 0 {
		return e, fmt.Errorf("%w: key %q: endpoint record needs a node, an address and a positive token", ErrBadRecord, kv.Key)
	}
	if e.DrainMillis < 0 {
		return e, fmt.Errorf("%w: key %q: endpoint record has a negative drain_ms %d", ErrBadRecord, kv.Key, e.DrainMillis)
	}
	return e, nil
}

// CandidateRecord is a candidate variable (claims 4 and 16): the best
// candidate its owner has been told of in a round.
type CandidateRecord struct {
	Round   Round  `json:"round"`
	Node    string `json:"node"`
	Session string `json:"session"`
	Rank    Rank   `json:"rank"`
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only plain structs of strings and integers are encoded here.
		panic(fmt.Sprintf("concord: encoding %T: %v", v, err))
	}
	return b
}

func decodeJSON(key string, data []byte, v any) error {
	// Unknown fields are allowed: a newer concord may add some, and a
	// rolling upgrade runs old and new nodes side by side.
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: key %q: %v (the record will be overwritten by the next election; inspect the key if this repeats)", ErrBadRecord, key, err)
	}
	return nil
}

// DecodeMember decodes and checks a member record; errors wrap ErrBadRecord
// and name the key.
func DecodeMember(kv KV) (MemberRecord, error) {
	var m MemberRecord
	if err := decodeJSON(kv.Key, kv.Value, &m); err != nil {
		return m, err
	}
	if err := ValidateName("member record's node", m.Node); err != nil {
		return m, fmt.Errorf("%w: key %q: %v", ErrBadRecord, kv.Key, err)
	}
	if m.Session == "" {
		return m, fmt.Errorf("%w: key %q: member record has no session", ErrBadRecord, kv.Key)
	}
	return m, nil
}

// DecodePrimary decodes and checks a primary record; errors wrap
// ErrBadRecord and name the key.
func DecodePrimary(kv KV) (PrimaryRecord, error) {
	var p PrimaryRecord
	if err := decodeJSON(kv.Key, kv.Value, &p); err != nil {
		return p, err
	}
	if (p.Node == "") != (p.Session == "") {
		return p, fmt.Errorf("%w: key %q: primary record names node %q with session %q: both or neither must be set", ErrBadRecord, kv.Key, p.Node, p.Session)
	}
	return p, nil
}

// DecodeRoster decodes a roster; errors wrap ErrBadRecord and name the key.
func DecodeRoster(kv KV) (RosterRecord, error) {
	var r RosterRecord
	err := decodeJSON(kv.Key, kv.Value, &r)
	return r, err
}

// DecodeCandidate decodes and checks a candidate variable; errors wrap
// ErrBadRecord and name the key.
func DecodeCandidate(kv KV) (CandidateRecord, error) {
	var c CandidateRecord
	if err := decodeJSON(kv.Key, kv.Value, &c); err != nil {
		return c, err
	}
	if c.Node == "" || c.Node != c.Rank.Node {
		return c, fmt.Errorf("%w: key %q: candidate record names node %q but its rank is for %q", ErrBadRecord, kv.Key, c.Node, c.Rank.Node)
	}
	return c, nil
}
