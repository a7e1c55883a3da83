package config

import (
	"io"
	"log/slog"
)

// Logger returns a logger that writes to w at log.level, as text or JSON
// lines per log.format. Unknown values (only possible in a File that was
// not validated) fall back to info and text.
func (f *File) Logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: f.level()}
	if f.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func (f *File) level() slog.Level {
	switch f.Log.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}
