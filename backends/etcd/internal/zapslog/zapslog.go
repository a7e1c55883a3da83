// Package zapslog routes the zap logs of etcd's server and client to a
// log/slog logger, so that a concord process has one log stream.
package zapslog

import (
	"context"
	"log/slog"
	"slices"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a zap logger that writes entries at min or above to lg.
// An entry for which demote returns true is written at slog's Debug
// level instead of its own: for noise that etcd logs as a warning or an
// error but that is expected where it runs (demote may be nil). A nil lg
// gives a logger that discards everything.
func New(lg *slog.Logger, min zapcore.Level, demote func(zapcore.Entry) bool) *zap.Logger {
	if lg == nil {
		return zap.NewNop()
	}
	return zap.New(&core{lg: lg, min: min, demote: demote})
}

// core is a zapcore.Core over a slog.Logger. Fields become attributes;
// the zap logger's name becomes the "logger" attribute.
type core struct {
	lg     *slog.Logger
	min    zapcore.Level
	demote func(zapcore.Entry) bool
	attrs  []slog.Attr
}

func (c *core) Enabled(l zapcore.Level) bool { return l >= c.min }

func (c *core) With(fields []zapcore.Field) zapcore.Core {
	return &core{lg: c.lg, min: c.min, demote: c.demote, attrs: append(slices.Clip(c.attrs), toAttrs(fields)...)}
}

func (c *core) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *core) Write(e zapcore.Entry, fields []zapcore.Field) error {
	attrs := append(slices.Clip(c.attrs), toAttrs(fields)...)
	if e.LoggerName != "" {
		attrs = append(attrs, slog.String("logger", e.LoggerName))
	}
	l := level(e.Level)
	if c.demote != nil && c.demote(e) {
		l = slog.LevelDebug
		attrs = append(attrs, slog.String("zap_level", e.Level.String()))
	}
	c.lg.LogAttrs(context.Background(), l, e.Message, attrs...)
	return nil
}

func (c *core) Sync() error { return nil }

func level(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

// toAttrs renders fields through zap's own map encoder, so that every
// field type (errors, durations, objects) reads as zap would print it.
func toAttrs(fields []zapcore.Field) []slog.Attr {
	if len(fields) == 0 {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	attrs := make([]slog.Attr, 0, len(keys))
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	return attrs
}
