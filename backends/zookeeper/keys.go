package zookeeper

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/concordha/concord/core"
)

// reserved is the top-level znode ZooKeeper keeps for itself (quotas,
// the ensemble's configuration). No key maps into it, and listing the
// whole tree leaves it out.
const reserved = "zookeeper"

// znodePath maps key to its znode: "a/b/c" and "/a/b/c" are both
// "/a/b/c". A leading "/" is kept once in the keys the Store returns,
// as the caller wrote it, but does not change the znode. Keys ZooKeeper
// cannot hold fail with core.ErrInvalidArgument: an empty key or segment
// ("a//b"), a trailing "/", a "." or ".." segment, a character
// ZooKeeper refuses in paths, or the reserved /zookeeper subtree.
func znodePath(op, key string) (string, error) {
	rel := strings.TrimPrefix(key, "/")
	switch {
	case key == "":
		return "", fmt.Errorf("zookeeper: %s: empty key: %w", op, core.ErrInvalidArgument)
	case rel == "":
		return "", fmt.Errorf("zookeeper: %s %q: the root znode is not a key: %w", op, key, core.ErrInvalidArgument)
	case strings.HasSuffix(rel, "/"):
		return "", fmt.Errorf("zookeeper: %s %q: a key cannot end in \"/\" (znode paths do not): %w", op, key, core.ErrInvalidArgument)
	}
	segs := strings.Split(rel, "/")
	if segs[0] == reserved {
		return "", fmt.Errorf("zookeeper: %s %q: /%s is reserved by ZooKeeper: %w", op, key, reserved, core.ErrInvalidArgument)
	}
	for _, seg := range segs {
		if err := checkSegment(seg, false); err != nil {
			return "", fmt.Errorf("zookeeper: %s %q: %v: %w", op, key, err, core.ErrInvalidArgument)
		}
	}
	return "/" + rel, nil
}

// folder is where a prefix's keys live in the znode tree. A prefix
// ending in "/" (or empty) names every znode below base. Otherwise its
// last part is match: the keys are the children of base whose names
// start with it, and everything below those.
type folder struct {
	prefix string // as the caller gave it
	base   string // znode path of the folder: "/" or "/a/b"
	match  string // "" for a prefix ending in "/"
	keyDir string // prefix up to and including its last "/": keys are keyDir + path below base
}

// parsePrefix maps a prefix onto its folder; a prefix no key could start
// with as ZooKeeper maps keys (an empty segment, "." or "..", a character
// ZooKeeper refuses) fails with core.ErrInvalidArgument.
func parsePrefix(op, prefix string) (folder, error) {
	f := folder{prefix: prefix, base: "/"}
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		f.keyDir, f.match = prefix[:i+1], prefix[i+1:]
	} else {
		f.match = prefix
	}
	dir := strings.TrimPrefix(f.keyDir, "/")
	if dir != "" {
		dir = dir[:len(dir)-1] // the trailing "/"
		segs := strings.Split(dir, "/")
		if segs[0] == reserved {
			return folder{}, fmt.Errorf("zookeeper: %s %q: /%s is reserved by ZooKeeper and holds no keys: %w", op, prefix, reserved, core.ErrInvalidArgument)
		}
		for _, seg := range segs {
			if err := checkSegment(seg, false); err != nil {
				return folder{}, fmt.Errorf("zookeeper: %s %q: %v: %w", op, prefix, err, core.ErrInvalidArgument)
			}
		}
		f.base = "/" + dir
	}
	if err := checkSegment(f.match, true); err != nil {
		return folder{}, fmt.Errorf("zookeeper: %s %q: %v: %w", op, prefix, err, core.ErrInvalidArgument)
	}
	return f, nil
}

// child returns the znode path of base's child name.
func (f folder) child(name string) string {
	if f.base == "/" {
		return "/" + name
	}
	return f.base + "/" + name
}

// key returns the key of znode p, which is below base.
func (f folder) key(p string) string {
	if f.base == "/" {
		return f.keyDir + p[1:]
	}
	return f.keyDir + p[len(f.base)+1:]
}

// accepts tells whether base's child name is under the prefix (and so
// is everything below it).
func (f folder) accepts(name string) bool {
	if f.base == "/" && name == reserved {
		return false
	}
	return strings.HasPrefix(name, f.match)
}

// concerns tells whether an event on znode p may change the folder.
func (f folder) concerns(p string) bool {
	return p == f.base || f.base == "/" || strings.HasPrefix(p, f.base+"/")
}

// checkSegment checks one part of a znode path as ZooKeeper's
// PathUtils.validatePath would; partial allows the "." and ".." and
// empty parts that only start a name (the last part of a prefix).
func checkSegment(seg string, partial bool) error {
	if !partial {
		switch seg {
		case "":
			return fmt.Errorf("empty path segment (\"//\")")
		case ".", "..":
			return fmt.Errorf("%q is not a valid znode name", seg)
		}
	}
	if !utf8.ValidString(seg) {
		return fmt.Errorf("segment %q is not valid UTF-8", seg)
	}
	for _, r := range seg {
		if badRune(r) {
			return fmt.Errorf("character %U is not allowed in znode paths", r)
		}
	}
	return nil
}

// badRune lists the characters ZooKeeper refuses in paths.
func badRune(r rune) bool {
	return r == 0 ||
		r > 0 && r <= 0x1f ||
		r >= 0x7f && r <= 0x9f ||
		r >= 0xd800 && r <= 0xf8ff ||
		r >= 0xfff0 && r <= 0xffff
}

// ancestors returns the znodes above p, from the top: "/a/b/c" gives
// "/a", "/a/b".
func ancestors(p string) []string {
	var out []string
	for i := 1; i < len(p); i++ {
		if p[i] == '/' {
			out = append(out, p[:i])
		}
	}
	return out
}
