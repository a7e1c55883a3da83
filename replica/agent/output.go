package agent

import (
	"bytes"
	"io"
	"sync"
)

// Bounds on what is kept and logged of an agent's output.
const (
	// maxLineBytes is how much of one line is kept; the rest is cut.
	maxLineBytes = 256
	// tailLines is how many of the last stderr lines an error quotes.
	tailLines = 20
	// maxStdoutLines is how many stdout lines of one action are logged.
	maxStdoutLines = 50
)

// lineWriter splits what an agent writes into lines, hands each (cut to
// maxLineBytes) to emit while the budget of limit lines lasts (0: no
// limit), and keeps the last keep lines. Its memory is bounded whatever
// the agent writes. exec.Cmd writes to it from its copying goroutine, so
// it is locked for the reads that follow Wait.
type lineWriter struct {
	emit  func(line string)
	keep  int
	limit int

	mu      sync.Mutex
	partial []byte
	cut     bool // the current line is longer than partial holds
	emitted int
	dropped int
	tail    []string
}

func newLineWriter(emit func(string), keep, limit int) *lineWriter {
	return &lineWriter{emit: emit, keep: keep, limit: limit}
}

// Write takes p whole, whatever its content, so that the copy feeding it
// never fails.
func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if room := maxLineBytes - len(l.partial); len(chunk) > room {
			l.partial = append(l.partial, chunk[:room]...)
			l.cut = true
		} else {
			l.partial = append(l.partial, chunk...)
		}
		if i < 0 {
			break
		}
		l.endLine()
		p = p[i+1:]
	}
	return n, nil
}

// endLine passes on the current line. l.mu is held.
func (l *lineWriter) endLine() {
	line := string(l.partial)
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if l.cut {
		line += " [cut]"
	}
	l.partial, l.cut = l.partial[:0], false
	if l.limit > 0 && l.emitted >= l.limit {
		l.dropped++
	} else {
		l.emitted++
		l.emit(line)
	}
	if l.keep > 0 {
		if len(l.tail) == l.keep {
			copy(l.tail, l.tail[1:])
			l.tail = l.tail[:l.keep-1]
		}
		l.tail = append(l.tail, line)
	}
}

// flush passes on a last line without a newline, and returns how many
// lines the limit dropped.
func (l *lineWriter) flush() (dropped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 || l.cut {
		l.endLine()
	}
	return l.dropped
}

// lines returns a copy of the kept lines.
func (l *lineWriter) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.tail...)
}

// countingWriter passes writes to w, counting bytes and keeping the first
// error, which exec.Cmd would report only if the agent exited 0.
type countingWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// recordingReader passes reads to r, keeping the first error other than
// io.EOF.
type recordingReader struct {
	r   io.Reader
	err error
}

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}
