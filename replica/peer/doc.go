// Package peer is the authenticated HTTP transport between the nodes of a
// concord cluster: a primary streams checkpoints (a service's whole state,
// possibly gigabytes) to the other nodes, and nodes make small JSON
// control calls (such as a handover) to each other.
//
// A Client sends; a Server, mounted at PathPrefix ("/v1/peer/") of an
// http.Server's mux without stripping the prefix, receives. The transport
// is HTTP/1.1 over TCP, with TLS when the client is given a tls.Config and
// the http.Server serves TLS.
//
// # What the transport promises
//
//   - Every request is authenticated with a secret that all nodes of the
//     cluster share: the receiver refuses, with HTTP 401, a request whose
//     MAC does not verify, whose timestamp lies more than the clock-skew
//     window from its own clock, or that it has seen before (replay).
//   - A checkpoint's body is authenticated too, and verified after it has
//     been spooled to disk and before the application sees it: an altered
//     or truncated body never reaches ServerConfig.Apply.
//   - Checkpoints stream: neither side holds a body in memory. The receiver
//     spools it to a temporary file, which it removes once Apply returns,
//     whatever the outcome.
//   - Apply calls for one service never overlap.
//   - SendCheckpoint returns only after the receiver applied the
//     checkpoint (or refused it, or failed), and it never reads its body
//     after it returned.
//
// # Wire protocol
//
// Paths: POST /v1/peer/checkpoint/{service} and POST /v1/peer/call/{name}.
// Each request carries the headers Concord-From (the sender's node ID),
// Concord-Time (the sender's clock, in Unix nanoseconds), Concord-Nonce
// (16 random bytes, hex) and Concord-Auth, the hex HMAC-SHA256 with the
// cluster secret of the canonical form of the request: the strings
// "concord-peer-v1", method, path, Concord-From, Concord-Time,
// Concord-Nonce, Concord-Service, Concord-Epoch, Concord-Token and
// Concord-Seq (an absent header counts as empty), in that order, each
// written as its length in decimal, ':', the string and '\n'. A
// checkpoint carries its service and stamp in the last four headers.
//
// The body MAC, Concord-Body-MAC, is the hex HMAC-SHA256 with the secret of
// the 32 bytes of the request MAC followed by the body. A checkpoint body
// is sent with chunked encoding and its MAC as an HTTP trailer, computed
// while the body streams; a call, whose body is small, sends it as a
// header. A checkpoint request says "Expect: 100-continue", so that a
// checkpoint the receiver refuses at once (ServerConfig.Admit) is not sent
// at all.
//
// Refusals and failures are answered with a 4xx or 5xx status and a plain
// text reason. When the application's error (from Admit, Apply or a call's
// handler) wraps one of these core errors, the answer names it in a
// Concord-Error header, so that the sender's error wraps the same core
// error, and takes its status:
//
//	core.ErrStaleCheckpoint, core.ErrNotPrimary, core.ErrConflict  409
//	core.ErrUnknownService, core.ErrNotFound                       404
//	core.ErrInvalidArgument                                        400
//	core.ErrClosed, core.ErrUnavailable                            503
//
// Any other error refuses a checkpoint in Admit with 403, and fails Apply
// or a call with 500.
//
// # Security
//
// The MACs give authenticity and integrity of requests, not
// confidentiality: without TLS anyone on the path can read checkpoints
// and calls. Responses are not authenticated either: without TLS, a
// machine on the path can forge an answer (make a sender believe a
// checkpoint was applied, or forge a call's result). Use TLS
// (ClientConfig.TLS, and an http.Server with TLS) on any network that is
// not trusted. Replay protection assumes the nodes' clocks agree to within
// ServerConfig.ClockSkew; keep them synchronised (NTP).
package peer
