package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// state is everything kvstore keeps: what DIR/state.json holds, what a
// checkpoint carries and what a restore replaces.
type state struct {
	// Version counts the writes applied to Data, across primaries: a
	// restored state keeps the version of the primary it came from.
	Version int64 `json:"version"`
	// Token is the highest fencing token this state has seen: the one of
	// the primary that wrote it, or of a later promotion.
	Token int64 `json:"token"`
	// Epoch is the election epoch that came with Token.
	Epoch int64 `json:"epoch"`
	// Data is the key-value map.
	Data map[string]string `json:"data"`
}

// stateFile is the name of the state's file in the data directory.
const stateFile = "state.json"

// maxStateBytes bounds a state read from a restore, so a wrong stream
// cannot fill the daemon's memory.
const maxStateBytes = 256 << 20

// validate checks a state that came from outside (a restore or the file).
func (s *state) validate() error {
	if s.Version < 0 {
		return fmt.Errorf("state: version %d is negative", s.Version)
	}
	if s.Token < 0 {
		return fmt.Errorf("state: token %d is negative", s.Token)
	}
	if s.Epoch < 0 {
		return fmt.Errorf("state: epoch %d is negative", s.Epoch)
	}
	for k := range s.Data {
		if k == "" {
			return errors.New("state: data has an empty key")
		}
	}
	if s.Data == nil {
		s.Data = map[string]string{}
	}
	return nil
}

// decodeState reads one state from r and refuses anything after it, so a
// truncated or concatenated stream does not pass for a whole state.
func decodeState(r io.Reader) (state, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var s state
	if err := dec.Decode(&s); err != nil {
		return state{}, fmt.Errorf("state: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return state{}, errors.New("state: more data after the state object; send exactly one JSON object")
	}
	if err := s.validate(); err != nil {
		return state{}, err
	}
	return s, nil
}

// loadState reads dir's state file; a missing file is an empty state.
func loadState(dir string) (state, error) {
	path := filepath.Join(dir, stateFile)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return state{Data: map[string]string{}}, nil
	}
	if err != nil {
		return state{}, err
	}
	defer f.Close()
	s, err := decodeState(f)
	if err != nil {
		return state{}, fmt.Errorf("%s: %w (move the file away to start empty, then restore a checkpoint)", path, err)
	}
	return s, nil
}

// saveState writes s to dir's state file atomically: a crash leaves
// either the old file or the new one, never a torn one.
func saveState(dir string, s *state) error {
	return writeFileAtomic(filepath.Join(dir, stateFile), 0o600, func(w io.Writer) error {
		return json.NewEncoder(w).Encode(s)
	})
}

// writeFileAtomic writes path through a temporary file in the same
// directory, synced and renamed over path.
func writeFileAtomic(path string, perm os.FileMode, write func(io.Writer) error) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if err := write(tmp); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	ok = true
	// The rename is durable only once the directory is synced; a failure
	// here leaves a correct file that may roll back on power loss.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
