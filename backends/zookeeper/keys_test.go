package zookeeper

import (
	"errors"
	"slices"
	"testing"

	"github.com/concordha/concord/core"
)

func TestZnodePath(t *testing.T) {
	for _, tc := range []struct{ key, want string }{
		{"a", "/a"},
		{"a/b/c", "/a/b/c"},
		{"/a/b/c", "/a/b/c"},
		{"cand/svc-1/node.2", "/cand/svc-1/node.2"},
		{"a/.hidden/..x", "/a/.hidden/..x"},
		{"primär ✓", "/primär ✓"},
		{"zookeeperish/x", "/zookeeperish/x"},
		{"a/zookeeper", "/a/zookeeper"},
	} {
		got, err := znodePath("get", tc.key)
		if err != nil || got != tc.want {
			t.Errorf("znodePath(%q) = %q, %v; want %q", tc.key, got, err, tc.want)
		}
	}
	for _, key := range []string{
		"", "/", "//a", "a//b", "a/", "/a/b/", "a/./b", "a/..", ".", "..",
		"a\x00b", "a\x01", "a\u007fb", "a\u0085", "a\ud7ff\ufff0", "\xff\xfe",
		"zookeeper", "zookeeper/quota", "/zookeeper/config",
	} {
		if got, err := znodePath("get", key); !errors.Is(err, core.ErrInvalidArgument) {
			t.Errorf("znodePath(%q) = %q, %v; want ErrInvalidArgument", key, got, err)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	for _, tc := range []struct {
		prefix, base, match string
		child, key          string // key of znode child, which must be under the prefix
	}{
		{"", "/", "", "/a/b", "a/b"},
		{"/", "/", "", "/a/b", "/a/b"},
		{"a/b/", "/a/b", "", "/a/b/c/d", "a/b/c/d"},
		{"/a/b/", "/a/b", "", "/a/b/c", "/a/b/c"},
		{"a/b", "/a", "b", "/a/bc/d", "a/bc/d"},
		{"/a/b", "/a", "b", "/a/b", "/a/b"},
		{"a", "/", "a", "/ab", "ab"},
		{"a/.", "/a", ".", "/a/.x", "a/.x"},
	} {
		f, err := parsePrefix("list", tc.prefix)
		if err != nil {
			t.Errorf("parsePrefix(%q): %v", tc.prefix, err)
			continue
		}
		if f.base != tc.base || f.match != tc.match {
			t.Errorf("parsePrefix(%q) = base %q match %q, want %q %q", tc.prefix, f.base, f.match, tc.base, tc.match)
		}
		if got := f.key(tc.child); got != tc.key {
			t.Errorf("prefix %q: key of %s = %q, want %q", tc.prefix, tc.child, got, tc.key)
		}
	}
	for _, prefix := range []string{"a//", "//", "a/./", "../", "a/\x00", "a\x01/", "zookeeper/", "/zookeeper/q"} {
		if f, err := parsePrefix("list", prefix); !errors.Is(err, core.ErrInvalidArgument) {
			t.Errorf("parsePrefix(%q) = %+v, %v; want ErrInvalidArgument", prefix, f, err)
		}
	}
}

func TestFolderAccepts(t *testing.T) {
	root, _ := parsePrefix("list", "")
	if root.accepts(reserved) || !root.accepts("zookeeperish") || !root.accepts("a") {
		t.Error("the root folder must leave out /zookeeper only")
	}
	f, _ := parsePrefix("list", "cand/s")
	if !f.accepts("s") || !f.accepts("svc") || f.accepts("t") {
		t.Error(`prefix "cand/s" must accept the children of /cand that start with "s"`)
	}
	if !f.concerns("/cand") || !f.concerns("/cand/x/y") || f.concerns("/candy") {
		t.Error(`prefix "cand/s" must hear the events of /cand and below, and only those`)
	}
}

func TestAncestors(t *testing.T) {
	if got, want := ancestors("/a/b/c"), []string{"/a", "/a/b"}; !slices.Equal(got, want) {
		t.Errorf("ancestors(/a/b/c) = %q, want %q", got, want)
	}
	if got := ancestors("/a"); len(got) != 0 {
		t.Errorf("ancestors(/a) = %q, want none", got)
	}
}

func TestSessionIDs(t *testing.T) {
	for _, id := range []int64{1, 0x100002a958a0004, -1} {
		s := formatSessionID(id)
		got, ok := parseSessionID(s)
		if !ok || got != id {
			t.Errorf("parseSessionID(formatSessionID(%d) = %q) = %d, %v", id, s, got, ok)
		}
	}
	for _, s := range []string{"", "0x", "0x0", "12", "0xzz", "storetest-no-such-session", "0x10000000000000000"} {
		if id, ok := parseSessionID(s); ok {
			t.Errorf("parseSessionID(%q) = %d, want not an ID", s, id)
		}
	}
}
