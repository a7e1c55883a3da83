package core

import (
	"fmt"
	"strings"
)

// Keys is the key layout of one cluster under its prefix. Each record type
// has its own folder, so that one prefix watch covers one type for every
// service:
//
//	<prefix>members/<node>          member record, bound to the node's session
//	<prefix>primary/<service>       primary record: the commit point of elections
//	<prefix>roster/<service>        which providers are secondaries, and how fresh
//	<prefix>cand/<service>/<node>   the node's candidate variable for the service
//	<prefix>endpoints/<service>     where the service's primary serves clients
//	<prefix>manager/...             the replica manager's state (see Keys.Manager)
//
// Candidate, primary and roster records are persistent: they are never
// deleted under a live compare-and-swap, because some stores reset
// versions when a key is re-created.
type Keys struct{ prefix string }

// NewKeys returns the layout under prefix, which must be empty or end in
// "/".
func NewKeys(prefix string) (Keys, error) {
	if err := validatePrefix(prefix); err != nil {
		return Keys{}, err
	}
	return Keys{prefix}, nil
}

// Members is the folder of member records.
func (k Keys) Members() string { return k.prefix + "members/" }

// Member is a node's member record.
func (k Keys) Member(node string) string { return k.prefix + "members/" + node }

// Primaries is the folder of primary records.
func (k Keys) Primaries() string { return k.prefix + "primary/" }

// Primary is a service's primary record.
func (k Keys) Primary(svc string) string { return k.prefix + "primary/" + svc }

// Rosters is the folder of rosters.
func (k Keys) Rosters() string { return k.prefix + "roster/" }

// Roster is a service's roster.
func (k Keys) Roster(svc string) string { return k.prefix + "roster/" + svc }

// Candidates is the folder of a service's candidate variables.
func (k Keys) Candidates(svc string) string { return k.prefix + "cand/" + svc + "/" }

// Candidate is a node's candidate variable for a service.
func (k Keys) Candidate(svc, n string) string { return k.prefix + "cand/" + svc + "/" + n }

// Endpoints is the folder of the services' published endpoints.
func (k Keys) Endpoints() string { return k.prefix + "endpoints/" }

// Endpoint is a service's published endpoint.
func (k Keys) Endpoint(svc string) string { return k.prefix + "endpoints/" + svc }

// AllCandidates is the folder of every service's candidate variables.
func (k Keys) AllCandidates() string { return k.prefix + "cand/" }

// Manager is the folder of the replica manager's state:
//
//	manager/switchover/<service>  the last switchover asked for, and its outcome
//	manager/plan/<service>        the order in which the primary makes secondaries
//	manager/departed              since when departed nodes and services are gone
func (k Keys) Manager() string { return k.prefix + "manager/" }

// Switchovers is the folder of switchover requests.
func (k Keys) Switchovers() string { return k.prefix + "manager/switchover/" }

// Switchover is a service's switchover request.
func (k Keys) Switchover(svc string) string { return k.prefix + "manager/switchover/" + svc }

// Plans is the folder of the manager's role plans.
func (k Keys) Plans() string { return k.prefix + "manager/plan/" }

// Plan is a service's role plan.
func (k Keys) Plan(svc string) string { return k.prefix + "manager/plan/" + svc }

// Departed is the manager's record of departed nodes and services.
func (k Keys) Departed() string { return k.prefix + "manager/departed" }

// NameIn returns the last part of key, below folder.
func (k Keys) NameIn(folder, key string) string { return strings.TrimPrefix(key, folder) }

// maxNameLen bounds node IDs and service names, which become key parts.
const maxNameLen = 128

// ValidateName checks a node ID or service name: 1 to 128 characters from
// letters, digits, '.', '_' and '-', not starting with '.'. Names become
// parts of store keys, so '/' and other separators are refused.
func ValidateName(what, name string) error {
	if name == "" {
		return fmt.Errorf("%s is empty: give a name of letters, digits, '.', '_' or '-'", what)
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("%s %.20q... is %d characters long: the limit is %d", what, name, len(name), maxNameLen)
	}
	if name[0] == '.' {
		return fmt.Errorf("%s %q starts with '.': start it with a letter or digit", what, name)
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
		if !ok {
			return fmt.Errorf("%s %q contains %q: use only letters, digits, '.', '_' and '-'", what, name, r)
		}
	}
	return nil
}

// validatePrefix checks a key prefix: empty, or ending in "/".
func validatePrefix(p string) error {
	if p != "" && !strings.HasSuffix(p, "/") {
		return fmt.Errorf("prefix %q must end with \"/\" so that it cannot match a sibling folder", p)
	}
	return nil
}
