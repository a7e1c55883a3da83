package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// Load reads the YAML file at path, applies the CONCORD_* variables of the
// process environment, decodes strictly, fills defaults and validates.
// See LoadEnv.
func Load(path string) (*File, error) {
	return LoadEnv(path, os.Environ())
}

// LoadEnv is Load with an explicit environment, a list of "KEY=value"
// strings as os.Environ returns. Of duplicate variables the first counts,
// as with os.Getenv; empty variables are ignored.
//
// Problems come in two rounds, each reported whole: first what keeps the
// file from being read as concord's schema (unreadable file, YAML syntax,
// unknown keys, values of the wrong type, bad overrides), then, once it
// decodes, the checks of Validate. The returned File is nil on error.
func LoadEnv(path string, environ []string) (*File, error) {
	f, err := decode(path, environ)
	if err != nil {
		return nil, err
	}
	f.fillDerived()
	if err := f.Validate(); err != nil {
		return nil, err
	}
	f.resolveAgentPaths()
	return f, nil
}

// decode runs the first round: read, check keys, override, decode.
//
// Viper reads the YAML and layers defaults, the file and the overrides.
// Two of its behaviours are worked around here. It reads variables only
// from the process environment, and Unmarshal ignores AutomaticEnv for keys
// the file leaves out; so the variables are looked up here, from the key
// list derived from File, and applied with Set. And it lower-cases keys and
// reports no positions; so the YAML is also parsed into nodes, which give
// the unknown-key check exact spelling and line numbers for messages.
func decode(path string, environ []string) (*File, error) {
	if path == "" {
		return nil, &fieldError{src: "config", msg: "no file given; give the path of a YAML file (configs/local.yaml is an example)"}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, readError(path, err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, syntaxError(path, err)
	}
	f := &File{Path: path, src: sources{lines: map[string]int{}, env: map[string]string{}}}
	var keyErrs []error
	if root := resolve(&doc); root != nil && root.Kind != yaml.MappingNode && root.Tag != "!!null" {
		return nil, &fieldError{src: fmt.Sprintf("%s:%d", path, root.Line), line: root.Line,
			msg: fmt.Sprintf("the file is %s, not a section of keys; start with keys such as node:, store: and services:", yamlKind(root))}
	}
	f.walk(&doc, fileType, "", &keyErrs)

	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
		if f.src.duplicate { // the decoder's complaint, already explained
			return nil, errors.Join(keyErrs...)
		}
		return nil, errors.Join(append(keyErrs, syntaxError(path, err))...)
	}
	defaults := reflect.ValueOf(Defaults())
	for _, l := range leaves {
		if d := defaults.FieldByIndex(l.index); !d.IsZero() {
			v.SetDefault(l.path, d.Interface())
		}
	}
	envErrs := f.applyEnv(v, environ)

	decErr := v.Unmarshal(f, func(c *mapstructure.DecoderConfig) {
		c.DecodeHook = strictHook
		c.WeaklyTypedInput = false
		c.ErrorUnused = true
	})
	errs := slices.Concat(keyErrs, f.decodeErrors(decErr, len(keyErrs) > 0), envErrs)
	if len(errs) > 0 {
		return nil, errors.Join(sortByLine(errs)...)
	}
	if _, ok := f.src.env["services"]; !ok {
		f.restoreMapKeys()
	}
	return f, nil
}

func readError(path string, err error) error {
	var why string
	switch {
	case errors.Is(err, fs.ErrNotExist):
		why = "no such file; check the path, or copy one of the examples in configs/"
	case errors.Is(err, fs.ErrPermission):
		why = "permission denied; make the file readable by the user running concord"
	default:
		if st, serr := os.Stat(path); serr == nil && st.IsDir() {
			why = "is a directory; give the path of a YAML file"
		} else {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			why = fmt.Sprintf("cannot read the file: %v", err)
		}
	}
	return &fieldError{src: path, msg: why}
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// syntaxError reports a YAML parse error, at its line when the parser
// gives one.
func syntaxError(path string, err error) error {
	var pe viper.ConfigParseError
	if errors.As(err, &pe) {
		err = pe.Unwrap()
	}
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	src := path
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		src, msg = path+":"+m[1], m[2]
	}
	return &fieldError{src: src, msg: "not valid YAML: " + msg + "; check the indentation (spaces, not tabs) and quote values containing ': ' or '#'"}
}

// resolve returns the content of a document node, following aliases.
func resolve(n *yaml.Node) *yaml.Node {
	if n.Kind == 0 { // empty input
		return nil
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		n = n.Content[0]
	}
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func yamlKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a section"
	}
	return fmt.Sprintf("the value %q", n.Value)
}

// walk checks the keys of the YAML node n, which should hold a value of
// type t at path, and records their lines. It reports sections and lists
// of the wrong kind, which an override inside them would otherwise hide
// from the decoder; other values are left to the decoder, which knows
// their types.
func (f *File) walk(n *yaml.Node, t reflect.Type, path string, errs *[]error) {
	n = resolve(n)
	if n == nil || n.Tag == "!!null" {
		return
	}
	t = deref(t)
	wrongKind := func(want yaml.Kind) bool {
		if n.Kind == want {
			return false
		}
		var got any
		switch n.Kind {
		case yaml.ScalarNode:
			_ = n.Decode(&got)
		case yaml.SequenceNode:
			got = []any{}
		case yaml.MappingNode:
			got = map[string]any{}
		}
		*errs = append(*errs, f.errorf(path, "%s", valueProblem(path, t, got)))
		f.src.reported = append(f.src.reported, path)
		return true
	}
	switch {
	case isSection(t):
		if wrongKind(yaml.MappingNode) {
			return
		}
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if k.Tag == "!!merge" {
				f.walkMerge(val, t, path, errs)
				continue
			}
			child := join(path, k.Value)
			if first, dup := seen[k.Value]; dup {
				f.src.duplicate = true
				*errs = append(*errs, &fieldError{src: fmt.Sprintf("%s:%d", f.Path, k.Line), line: k.Line, field: child,
					msg: fmt.Sprintf("given twice (also on line %d); keep one", first)})
				continue
			}
			seen[k.Value] = k.Line
			sf, ok := childKey(t, k.Value)
			if !ok {
				*errs = append(*errs, f.unknownKey(k, t, path))
				continue
			}
			f.src.lines[child] = k.Line
			f.walk(val, sf.Type, child, errs)
		}
	case isSectionList(t):
		if wrongKind(yaml.SequenceNode) {
			return
		}
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			f.src.lines[p] = item.Line
			f.walk(item, t.Elem(), p, errs)
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, item := range n.Content {
			f.src.lines[fmt.Sprintf("%s[%d]", path, i)] = item.Line
		}
	case t.Kind() == reflect.Map && n.Kind == yaml.MappingNode:
		f.walkMap(n, path, map[string]*yaml.Node{}, errs)
	}
}

// walkMap records the names of a map of free-form names (agent params)
// as the file spells them, since viper lower-cases every key, and their
// lines; and it reports names that differ only in case, which viper would
// silently merge. seen maps the lower-cased names to their first key.
func (f *File) walkMap(n *yaml.Node, path string, seen map[string]*yaml.Node, errs *[]error) {
	n = resolve(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if k.Tag == "!!merge" {
			if m := resolve(n.Content[i+1]); m != nil && m.Kind == yaml.SequenceNode {
				for _, item := range m.Content {
					f.walkMap(item, path, seen, errs)
				}
			} else {
				f.walkMap(m, path, seen, errs)
			}
			continue
		}
		child := path + "[" + k.Value + "]"
		if first, dup := seen[strings.ToLower(k.Value)]; dup {
			how := "keep one"
			if first.Value != k.Value {
				how = "names differing only in case are the same name to concord; rename one"
			}
			f.src.duplicate = f.src.duplicate || first.Value == k.Value
			*errs = append(*errs, &fieldError{src: fmt.Sprintf("%s:%d", f.Path, k.Line), line: k.Line, field: child,
				msg: fmt.Sprintf("given twice (also as %s on line %d); %s", first.Value, first.Line, how)})
			continue
		}
		seen[strings.ToLower(k.Value)] = k
		f.src.lines[child] = k.Line
		if f.src.mapKeys == nil {
			f.src.mapKeys = map[string][]string{}
		}
		f.src.mapKeys[path] = append(f.src.mapKeys[path], k.Value)
	}
}

// restoreMapKeys gives the maps of free-form names back the spelling the
// file uses, which viper lower-cased. Only agent params are such maps.
func (f *File) restoreMapKeys() {
	for i, s := range f.Services {
		if s.Agent == nil || s.Agent.Params == nil {
			continue
		}
		m := s.Agent.Params
		for _, k := range f.src.mapKeys[fmt.Sprintf("services[%d].agent.params", i)] {
			if lower := strings.ToLower(k); lower != k {
				if v, ok := m[lower]; ok {
					delete(m, lower)
					m[k] = v
				}
			}
		}
	}
}

// walkMerge walks the sections merged in with a YAML "<<" key.
func (f *File) walkMerge(n *yaml.Node, t reflect.Type, path string, errs *[]error) {
	n = resolve(n)
	if n == nil {
		return
	}
	if n.Kind == yaml.SequenceNode {
		for _, m := range n.Content {
			f.walk(m, t, path, errs)
		}
		return
	}
	f.walk(n, t, path, errs)
}

func (f *File) unknownKey(k *yaml.Node, t reflect.Type, parent string) error {
	e := &fieldError{src: fmt.Sprintf("%s:%d", f.Path, k.Line), line: k.Line, field: join(parent, k.Value)}
	if s := suggestKey(t, parent, k.Value); s != "" {
		e.msg = fmt.Sprintf("unknown key; did you mean %s?", s)
		return e
	}
	where := "the file"
	if parent != "" {
		where = parent
	}
	e.msg = fmt.Sprintf("unknown key; %s takes %s", where, strings.Join(childKeys(t), ", "))
	return e
}

// applyEnv sets the keys overridden by CONCORD_* variables in environ.
func (f *File) applyEnv(v *viper.Viper, environ []string) []error {
	env := map[string]string{}
	for _, kv := range environ {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		if _, dup := env[name]; !dup {
			env[name] = val
		}
	}
	known := map[string]bool{ServicesEnv: true, ConfigEnv: true}
	var errs []error
	for _, l := range leaves {
		known[l.env] = true
		s := env[l.env]
		if s == "" {
			continue
		}
		f.src.env[l.path] = l.env
		val, err := envValue(l, s)
		if err != nil {
			errs = append(errs, f.errorf(l.path, "%s", valueProblem(l.path, l.typ, s)))
			continue
		}
		v.Set(l.path, val)
	}
	if s := env[ServicesEnv]; s != "" {
		f.src.env["services"] = ServicesEnv
		items, err := parseServices(s)
		if err != nil {
			errs = append(errs, f.errorf("services", "%v", err))
		} else {
			v.Set("services", items)
		}
	}
	var unknown []string
	for name := range env {
		if !known[name] {
			unknown = append(unknown, name)
		}
	}
	slices.Sort(unknown)
	for _, name := range unknown {
		w := name + ": matches no config key and is ignored"
		if s := suggestEnv(name); s != "" {
			w += "; did you mean " + s + "?"
		}
		f.src.unknownEnv = append(f.src.unknownEnv, w)
	}
	return errs
}

// envValue converts a variable's text to the value the decoder expects
// for the key. Durations stay text: the decode hook parses them.
func envValue(l leaf, s string) (any, error) {
	s = strings.TrimSpace(s)
	switch {
	case l.typ.Kind() == reflect.Int && l.typ != durationType:
		return strconv.Atoi(s)
	case l.typ.Kind() == reflect.Bool:
		return strconv.ParseBool(s)
	case l.typ.Kind() == reflect.Slice:
		var out []string
		for part := range strings.SplitSeq(s, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
		return out, nil
	}
	return s, nil
}

// parseServices parses CONCORD_SERVICES: comma-separated name or
// name:priority items.
func parseServices(s string) ([]any, error) {
	const how = "write name or name:priority items separated by commas, e.g. db:10,cache"
	var items []any
	for i, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			return nil, fmt.Errorf("item %d is empty; %s", i+1, how)
		}
		name, prio, hasPrio := strings.Cut(part, ":")
		item := map[string]any{"name": strings.TrimSpace(name), "priority": 0}
		if hasPrio {
			p, err := strconv.Atoi(strings.TrimSpace(prio))
			if err != nil {
				return nil, fmt.Errorf("item %q: priority %q is not a whole number; %s", part, prio, how)
			}
			item["priority"] = p
		}
		items = append(items, item)
	}
	return items, nil
}

// strictHook accepts a value only if it has the kind of its key's type,
// unlike viper's default weak decoding (which turns 10 into a 10ns
// duration and true into the string "1"). Durations are parsed here; a
// bare number is refused unless it is 0.
func strictHook(from, to reflect.Type, data any) (any, error) {
	bad := &badValue{got: data}
	fk := from.Kind()
	switch {
	case to == durationType:
		switch d := data.(type) {
		case time.Duration:
			return d, nil
		case string:
			v, err := time.ParseDuration(strings.TrimSpace(d))
			if err != nil {
				return nil, bad
			}
			return v, nil
		}
		if n, ok := number(data); ok && n == 0 {
			return time.Duration(0), nil
		}
		return nil, bad
	case to.Kind() == reflect.String:
		if fk == reflect.String {
			return data, nil
		}
	case to.Kind() == reflect.Int:
		if n, ok := number(data); ok && n == math.Trunc(n) && math.Abs(n) <= 1<<53 {
			return int(n), nil
		}
	case to.Kind() == reflect.Bool:
		if fk == reflect.Bool {
			return data, nil
		}
	case to.Kind() == reflect.Slice:
		if fk == reflect.Slice || fk == reflect.Array {
			return data, nil
		}
	case to.Kind() == reflect.Struct, to.Kind() == reflect.Map:
		if fk == reflect.Map {
			return data, nil
		}
	default:
		return data, nil
	}
	return nil, bad
}

// decodeErrors turns the decoder's errors into fieldErrors. Unknown keys
// are already reported, from the YAML nodes, when skipUnused.
func (f *File) decodeErrors(err error, skipUnused bool) []error {
	if err == nil {
		return nil
	}
	var out []error
	for _, e := range leafErrors(err) {
		var de *mapstructure.DecodeError
		if !errors.As(e, &de) {
			out = append(out, f.errorf("", "%v", e))
			continue
		}
		name, inner := de.Name(), de.Unwrap()
		if strings.HasPrefix(inner.Error(), "has invalid keys") && skipUnused || slices.Contains(f.src.reported, name) {
			continue
		}
		var got any
		var bv *badValue
		var ute *mapstructure.UnconvertibleTypeError
		var pe *mapstructure.ParseError
		switch {
		case errors.As(inner, &bv):
			got = bv.got
		case errors.As(inner, &ute):
			got = ute.Value
		case errors.As(inner, &pe):
			got = pe.Value
		default:
			out = append(out, f.errorf(name, "%v", inner))
			continue
		}
		t, ok := typeAt(name)
		if !ok {
			out = append(out, f.errorf(name, "%v", inner))
			continue
		}
		out = append(out, f.errorf(name, "%s", valueProblem(name, t, got)))
	}
	return out
}

// leafErrors flattens joined and wrapped errors down to the
// mapstructure.DecodeErrors (or other errors) they carry.
func leafErrors(err error) []error {
	switch u := err.(type) {
	case *mapstructure.DecodeError:
		return []error{err}
	case interface{ Unwrap() []error }:
		var out []error
		for _, e := range u.Unwrap() {
			out = append(out, leafErrors(e)...)
		}
		return out
	case interface{ Unwrap() error }:
		if inner := u.Unwrap(); inner != nil {
			return leafErrors(inner)
		}
	}
	return []error{err}
}
