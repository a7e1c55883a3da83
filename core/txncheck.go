package core

import (
	"fmt"
	"strings"
)

// CheckTxn checks a batch against the rules of Txner that need no store:
// known op kinds, a key for every op but OpList, a key for every guard,
// no key written twice, and no op reading a key that another op writes
// (for OpList: a key under its prefix). Backends call it before running
// a Txn; the error wraps ErrInvalidArgument. The op-count limit and any
// limit of the backend's own are the backend's to check.
func CheckTxn(ops []Op) error {
	written := make(map[string]bool)
	for i, o := range ops {
		switch o.Kind {
		case OpGet, OpCreate, OpCAS:
			if o.Key == "" {
				return fmt.Errorf("txn op %d: empty key: %w", i, ErrInvalidArgument)
			}
		case OpList:
		default:
			return fmt.Errorf("txn op %d: unknown kind %d: %w", i, o.Kind, ErrInvalidArgument)
		}
		for _, g := range o.Guards {
			if g.Key == "" {
				return fmt.Errorf("txn op %d on %q: guard with an empty key: %w", i, o.Key, ErrInvalidArgument)
			}
		}
		if o.Kind != OpCreate && o.Kind != OpCAS {
			continue
		}
		if written[o.Key] {
			return fmt.Errorf("txn writes %q twice: %w", o.Key, ErrInvalidArgument)
		}
		written[o.Key] = true
	}
	for _, o := range ops {
		switch o.Kind {
		case OpGet:
			if written[o.Key] {
				return fmt.Errorf("txn reads %q, which it also writes: %w", o.Key, ErrInvalidArgument)
			}
		case OpList:
			for key := range written {
				if strings.HasPrefix(key, o.Key) {
					return fmt.Errorf("txn lists %q, which holds %q that it also writes: %w", o.Key, key, ErrInvalidArgument)
				}
			}
		}
	}
	return nil
}
