package config

import (
	"reflect"
	"slices"
	"strings"
	"time"
)

// The schema is derived from File's struct tags, once: the YAML keys
// (mapstructure tags), the environment variables, the store types that use
// each key (stores tags) and the secrets (secret tags). Adding a field to
// File adds its key, its override and its checks.

// EnvPrefix starts every environment override.
const EnvPrefix = "CONCORD_"

// ServicesEnv overrides the whole services list: "db:10,cache" is db with
// priority 10 and cache with priority 0.
const ServicesEnv = EnvPrefix + "SERVICES"

// ConfigEnv names the config file for cmd/concord. It is not a key, and
// Load does not read it; it is listed so that it draws no warning.
const ConfigEnv = EnvPrefix + "CONFIG"

// leaf is a key that holds a value (not a section): a scalar or a list of
// strings.
type leaf struct {
	path   string // store.session_ttl
	env    string // CONCORD_STORE_SESSION_TTL
	typ    reflect.Type
	index  []int    // File field index path, for reflect.Value.FieldByIndex
	stores []string // store types that use the key; nil: all
	secret bool
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	fileType     = reflect.TypeFor[File]()

	// leaves lists every leaf key in declaration order. The services list
	// is not a leaf: its items are sections.
	leaves = collectLeaves(fileType, "", nil, nil)
	// leafByPath indexes leaves.
	leafByPath = func() map[string]*leaf {
		m := map[string]*leaf{}
		for i := range leaves {
			m[leaves[i].path] = &leaves[i]
		}
		return m
	}()
)

func collectLeaves(t reflect.Type, prefix string, index []int, stores []string) []leaf {
	var out []leaf
	for i := range t.NumField() {
		sf := t.Field(i)
		name := keyName(sf)
		if name == "" {
			continue
		}
		path := join(prefix, name)
		idx := append(slices.Clone(index), i)
		st := stores
		if tag, ok := sf.Tag.Lookup("stores"); ok {
			st = strings.Split(tag, ",")
		}
		switch {
		case isSection(sf.Type):
			out = append(out, collectLeaves(sf.Type, path, idx, st)...)
		case isSectionList(sf.Type):
			// Items are addressed by index; see ServicesEnv.
		default:
			out = append(out, leaf{
				path:   path,
				env:    envName(path),
				typ:    sf.Type,
				index:  idx,
				stores: st,
				secret: sf.Tag.Get("secret") == "true",
			})
		}
	}
	return out
}

// keyName is the YAML key of a struct field, "" if it has none.
func keyName(sf reflect.StructField) string {
	if !sf.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(sf.Tag.Get("mapstructure"), ",")
	if name == "-" {
		return ""
	}
	return name
}

func isSection(t reflect.Type) bool { return t.Kind() == reflect.Struct }

func isSectionList(t reflect.Type) bool {
	return t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct
}

// deref strips pointers from t. The items of services hold pointers for
// the keys whose absence matters (nil: the default); to the schema they
// are the values they point to. Keys outside services hold no pointers,
// so that every leaf can be reached with FieldByIndex.
func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// envName is the environment variable that overrides the key at path.
func envName(path string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
}

// childKey returns the field of section type t whose key is name.
func childKey(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		sf := t.Field(i)
		if keyName(sf) == name {
			return sf, true
		}
	}
	return reflect.StructField{}, false
}

// childKeys lists the keys of section type t.
func childKeys(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		if n := keyName(t.Field(i)); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// typeAt returns the Go type of the value at a decoder path such as
// store.session_ttl, services[2].priority or
// services[0].agent.params[listen], pointers stripped.
func typeAt(path string) (reflect.Type, bool) {
	t := fileType
	if path == "" {
		return t, true
	}
	for part := range splitPath(path) {
		name, rest, _ := strings.Cut(part, "[")
		if t.Kind() != reflect.Struct {
			return nil, false
		}
		sf, ok := childKey(t, name)
		if !ok {
			return nil, false
		}
		t = deref(sf.Type)
		for ; rest != ""; _, rest, _ = strings.Cut(rest, "[") {
			if t.Kind() != reflect.Slice && t.Kind() != reflect.Map {
				return nil, false
			}
			t = deref(t.Elem())
		}
	}
	return t, true
}

// splitPath splits a key path at the dots outside brackets: a map key
// such as params[a.b] may hold a dot.
func splitPath(path string) func(func(string) bool) {
	return func(yield func(string) bool) {
		depth, start := 0, 0
		for i := 0; i < len(path); i++ {
			switch path[i] {
			case '[':
				depth++
			case ']':
				depth--
			case '.':
				if depth == 0 {
					if !yield(path[start:i]) {
						return
					}
					start = i + 1
				}
			}
		}
		yield(path[start:])
	}
}

// isSecret reports whether the key at path holds a secret.
func isSecret(path string) bool {
	l, ok := leafByPath[path]
	return ok && l.secret
}

// suggestKey proposes a known key for the unknown key name found in the
// section at parent (of type t): the closest sibling, else the closest key
// anywhere (for a key written in the wrong section). "" if none is close.
func suggestKey(t reflect.Type, parent, name string) string {
	name = strings.ToLower(name)
	if k := closest(name, childKeys(t)); k != "" {
		return join(parent, k)
	}
	var lasts []string
	for _, l := range leaves {
		lasts = append(lasts, l.path[strings.LastIndex(l.path, ".")+1:])
	}
	if k := closest(name, lasts); k != "" {
		for _, l := range leaves {
			if strings.HasSuffix(l.path, "."+k) || l.path == k {
				return l.path
			}
		}
	}
	return ""
}

// suggestEnv proposes a known variable for an unknown CONCORD_ variable.
func suggestEnv(name string) string {
	names := []string{ServicesEnv}
	for _, l := range leaves {
		names = append(names, l.env)
	}
	return closest(name, names)
}

// closest returns the candidate nearest to word: within a third of
// word's length in edits (at least one), else the first that word is a
// prefix of (prio for priority). "" if none is close.
func closest(word string, candidates []string) string {
	best, bestDist := "", max(1, len(word)/3)+1
	for _, c := range candidates {
		if d := editDistance(word, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	if best == "" && len(word) >= 2 {
		for _, c := range candidates {
			if strings.HasPrefix(c, word) {
				return c
			}
		}
	}
	return best
}

// editDistance is the optimal string alignment distance between a and b:
// insertions, deletions, substitutions and swaps of neighbours.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
