package config

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// sources records where a File's values came from, so that errors can
// point there.
type sources struct {
	// lines maps key paths (store.session_ttl, services[1]) to their line
	// in the file.
	lines map[string]int
	// env maps key paths set from the environment to the variable.
	env map[string]string
	// reported lists the key paths whose values the YAML walk already
	// reported as the wrong kind.
	reported []string
	// duplicate is set when the walk found a key given twice, which the
	// YAML decoder refuses too.
	duplicate bool
	// unknownEnv holds warnings about CONCORD_ variables that match no key.
	unknownEnv []string
	// mapKeys maps the path of a map of free-form names (agent params) to
	// its names as the file spells them.
	mapKeys map[string][]string
}

// fieldError is one problem with one key: where it came from, which key,
// what is wrong and how to fix it.
type fieldError struct {
	src   string // file, file:line, or environment variable
	line  int    // in the file; 0 if unknown or from the environment
	field string // key path; "" for the whole file
	msg   string
}

func (e *fieldError) Error() string {
	if e.field == "" {
		return e.src + ": " + e.msg
	}
	return e.src + ": " + e.field + ": " + e.msg
}

// errorf returns a fieldError for the key at field.
func (f *File) errorf(field, format string, args ...any) error {
	src, line := f.source(field)
	return &fieldError{src: src, line: line, field: field, msg: fmt.Sprintf(format, args...)}
}

// sortByLine orders errors by their line in the file, keeping the order
// of errors on one line and putting errors without a line (from the
// environment, or about keys the file leaves out) last.
func sortByLine(errs []error) []error {
	line := func(e error) int {
		var fe *fieldError
		if errors.As(e, &fe) && fe.line > 0 {
			return fe.line
		}
		return math.MaxInt
	}
	slices.SortStableFunc(errs, func(a, b error) int { return cmp.Compare(line(a), line(b)) })
	return errs
}

// source names where the value at field came from: the environment
// variable that set it (or the list it belongs to), else the file and the
// line of the key. For a key the file leaves out, the line is that of the
// nearest section the file has (where the key would go).
func (f *File) source(field string) (src string, line int) {
	for p := field; p != ""; p = parentPath(p) {
		if env, ok := f.src.env[p]; ok {
			return env, 0
		}
	}
	file := f.Path
	if file == "" {
		file = "config"
	}
	for p := field; p != ""; p = parentPath(p) {
		if line, ok := f.src.lines[p]; ok {
			return fmt.Sprintf("%s:%d", file, line), line
		}
	}
	return file, 0
}

// parentPath strips the last part of a key path: store.tls.ca_file gives
// store.tls, services[1] gives services, node gives "".
func parentPath(p string) string {
	if strings.HasSuffix(p, "]") {
		return p[:strings.LastIndex(p, "[")]
	}
	if i := strings.LastIndex(p, "."); i >= 0 {
		return p[:i]
	}
	return ""
}

// badValue is the decode hook's verdict that a value does not fit its
// key's type. The message is built later, when the key path is known.
type badValue struct{ got any }

// Error does not show the value, which may be a secret.
func (e *badValue) Error() string { return "the value does not fit the key's type" }

// valueProblem explains why got does not fit the key at path, of type t,
// and what to write instead. Secrets are not shown.
func valueProblem(path string, t reflect.Type, got any) string {
	t = deref(t)
	shown := show(got)
	if isSecret(path) {
		shown = "the value (" + kindOf(got) + ")"
	}
	n, isNum := number(got)
	_, isStr := got.(string)
	switch {
	case t == durationType:
		if s, ok := got.(string); ok {
			if f, err := strconv.ParseFloat(strings.TrimSpace(s), 64); err == nil {
				n, isNum = f, true
			}
		}
		if isNum {
			return fmt.Sprintf("%s has no unit; write e.g. %vs or %vms", shown, n, n)
		}
		return fmt.Sprintf("%s is not a duration; write e.g. %s (units: ms, s, m, h)", shown, exampleDuration(path))
	case t.Kind() == reflect.String:
		if isNum || kindOf(got) == "true or false" {
			if isSecret(path) {
				return fmt.Sprintf("%s is not a string; quote it", shown)
			}
			return fmt.Sprintf("%s is not a string; quote it: \"%v\"", shown, got)
		}
		return fmt.Sprintf("%s is not a string; write a single value", shown)
	case t.Kind() == reflect.Int:
		return fmt.Sprintf("%s is not a whole number; write e.g. 10", shown)
	case t.Kind() == reflect.Bool:
		return fmt.Sprintf("%s is not true or false; write true or false", shown)
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.String:
		if isStr {
			return fmt.Sprintf("%s is a single string, not a list; write [%v]", shown, got)
		}
		return fmt.Sprintf("%s is not a list of strings; write e.g. [a, b]", shown)
	case isSectionList(t):
		return fmt.Sprintf("%s is not a list; write one \"- name: ...\" item per entry", shown)
	case t.Kind() == reflect.Map:
		return fmt.Sprintf("%s is not a section of names and values; write them on the lines below %s, indented, e.g. listen: 127.0.0.1:8001", shown, path)
	case isSection(t) && strings.HasSuffix(path, "]"):
		if isStr {
			return fmt.Sprintf("%s is not a section; write the item as keys, e.g. - name: %v", shown, got)
		}
		return fmt.Sprintf("%s is not a section; write the item as keys, e.g. - name: ...", shown)
	case isSection(t):
		name := path
		if name == "" {
			return fmt.Sprintf("%s is not a section of keys; the file must be keys such as node:, store: and services:", shown)
		}
		return fmt.Sprintf("%s is not a section; write the keys of %s on the lines below it, indented", shown, name)
	}
	return fmt.Sprintf("%s does not fit a key of type %v", shown, t)
}

// exampleDuration is the default of the key at path, or 10s.
func exampleDuration(path string) string {
	if l, ok := leafByPath[path]; ok {
		d := reflect.ValueOf(Defaults()).FieldByIndex(l.index).Interface().(time.Duration)
		if d > 0 {
			return d.String()
		}
	}
	if d, ok := serviceDurationDefault(path); ok {
		return d.String()
	}
	return "10s"
}

// serviceDurationDefault is the default of a duration key of a services
// item, such as services[1].agent.timeouts.start.
func serviceDurationDefault(path string) (time.Duration, bool) {
	if !strings.HasPrefix(path, "services[") {
		return 0, false
	}
	s := Service{Agent: &ServiceAgent{}}.withDefaults()
	_, rest, _ := strings.Cut(path, "].")
	v := reflect.ValueOf(s)
	for part := range strings.SplitSeq(rest, ".") {
		v = reflect.Indirect(v)
		if v.Kind() != reflect.Struct {
			return 0, false
		}
		sf, ok := childKey(v.Type(), part)
		if !ok {
			return 0, false
		}
		v = v.FieldByIndex(sf.Index)
	}
	if v = reflect.Indirect(v); !v.IsValid() || v.Type() != durationType {
		return 0, false
	}
	return time.Duration(v.Int()), true
}

// show renders a value found in the file or environment for a message.
func show(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("%q", v)
	case nil:
		return "nothing"
	}
	switch k := kindOf(v); k {
	case "a list", "a section":
		return k
	}
	return fmt.Sprint(v)
}

// kindOf names the YAML kind of v.
func kindOf(v any) string {
	if _, ok := number(v); ok {
		return "a number"
	}
	switch reflect.ValueOf(v).Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a section"
	}
	return "empty"
}

// number returns v as a float64 if it is a number.
func number(v any) (float64, bool) {
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if rv.Type() == durationType {
			return 0, false
		}
		return float64(rv.Int()), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return float64(rv.Uint()), true
	case reflect.Float32, reflect.Float64:
		return rv.Float(), true
	}
	return 0, false
}
