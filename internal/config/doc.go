// Package config loads, checks and explains concord's YAML configuration
// file.
//
// What Load promises:
//
//   - The returned *File is complete: every key the file and the
//     environment leave out holds its default (see Defaults and
//     docs/configuration.md), so callers never see a zero duration.
//   - The returned *File is valid: Validate and core.Config.Validate pass.
//   - Decoding is strict: unknown keys (with a suggestion of the closest
//     known key), wrong types and bare numbers for durations are errors,
//     not silently dropped or weakly converted values.
//   - Every error starts with where the value came from (the file, with
//     the line when known, or the CONCORD_* variable that overrode it),
//     then names the key path (e.g. store.session_ttl) and says how to fix
//     it. All problems found in one pass are reported together.
//   - Secrets (store.auth.password, token, digest, and the contents of
//     cluster.secret_file) never appear in errors.
//   - Agent commands and directories are absolute in the returned File:
//     relative ones are resolved against the working directory at Load,
//     where they were checked.
//
// Every key can be overridden from the environment with CONCORD_ followed
// by the upper-cased key path, levels joined by "_" (store.session_ttl is
// CONCORD_STORE_SESSION_TTL). The list of keys is derived from the struct
// tags of File, so overrides cannot drift from the schema.
package config
