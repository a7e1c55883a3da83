package zookeeper

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/concordha/concord/core"
)

// errNoSession: ZooKeeper has no live session with the ID and password
// given.
var errNoSession = errors.New("ZooKeeper has no such live session")

// ExpireSession implements core.Expirer for the sessions opened by this
// process, from any of its Stores: ZooKeeper ends a session only for a
// client that presents its ID and password, and go-zookeeper keeps the
// password private; the Store reads it from the connect response (see
// tracker). ExpireSession connects to ZooKeeper as that session, which
// takes the session over from its holder's connection, and sends a
// close request: ZooKeeper ends the session and deletes its keys. The
// holder's Done fires with core.ErrSessionLost before that, and its
// connection is closed, never reused.
// Errors: core.ErrNotFound if no live session has that ID, or if this
// process did not open it (or has forgotten it: a session its holder
// lost is remembered for at least a minute, and 20 session timeouts).
func (s *Store) ExpireSession(ctx context.Context, sessionID string) error {
	if err := s.usable(ctx, opExpire); err != nil {
		return err
	}
	id, ok := parseSessionID(sessionID)
	if !ok {
		return fmt.Errorf("zookeeper: expire session %q: not a ZooKeeper session ID (0x and hexadecimal digits): %w", sessionID, core.ErrNotFound)
	}
	reg := sessions.get(id)
	if reg == nil {
		return fmt.Errorf("zookeeper: expire session %s: no session with this ID is live among those this process opened (ZooKeeper ends a session only for a client holding its password): %w",
			sessionID, core.ErrNotFound)
	}
	if ss := reg.ss; ss != nil {
		// Its holder learns first, so that Done fires before ZooKeeper
		// deletes its keys.
		ss.tr.stop()
		ss.fire(ss.lost("expired by ExpireSession"))
		ss.halt()
		ss.s.forget(ss)
		defer ss.s.spawn(ss.shutdown)
	}
	err := s.closeRemote(ctx, id, reg.passwd, reg.timeout)
	switch {
	case err == nil:
		sessions.remove(id)
		return nil
	case errors.Is(err, errNoSession):
		sessions.remove(id)
		return fmt.Errorf("zookeeper: expire session %s: %w (%w)", sessionID, core.ErrNotFound, err)
	}
	if reg.ss != nil {
		sessions.lost(id)
	}
	return s.convertError(ctx, opExpire, sessionID, err)
}

// closeRemote ends session id at the first server that answers.
func (s *Store) closeRemote(ctx context.Context, id int64, passwd []byte, timeout time.Duration) error {
	var err error
	for _, ep := range s.cfg.Endpoints {
		err = s.closeAt(ctx, ep, id, passwd, timeout)
		if err == nil || errors.Is(err, errNoSession) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// closeAt speaks just enough of ZooKeeper's protocol to end a session:
// a connect request that resumes session id with its password, then a
// close request, on a connection of its own (over TLS with Config.TLS,
// as every connection of the Store). A server that does not know the
// session (or not with that password) answers the connect request with
// timeout 0 and session 0.
func (s *Store) closeAt(ctx context.Context, addr string, id int64, passwd []byte, timeout time.Duration) error {
	c, err := s.dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(s.cfg.DialTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()

	// ConnectRequest: protocolVersion, lastZxidSeen, timeOut, sessionId,
	// passwd. lastZxidSeen 0: a server refuses a client that has seen
	// more than it has.
	req := binary.BigEndian.AppendUint32(nil, 0)
	req = binary.BigEndian.AppendUint64(req, 0)
	req = binary.BigEndian.AppendUint32(req, uint32(timeout/time.Millisecond))
	req = binary.BigEndian.AppendUint64(req, uint64(id))
	req = binary.BigEndian.AppendUint32(req, uint32(len(passwd)))
	req = append(req, passwd...)
	if err := writeFrame(c, req); err != nil {
		return err
	}
	resp, err := readFrame(c)
	if err != nil {
		return err
	}
	if len(resp) < 16 {
		return fmt.Errorf("short connect response (%d bytes)", len(resp))
	}
	if to, sid := int32(binary.BigEndian.Uint32(resp[4:8])), int64(binary.BigEndian.Uint64(resp[8:16])); to <= 0 || sid != id {
		return errNoSession
	}
	// RequestHeader: xid, type.
	const xid = 1
	req = binary.BigEndian.AppendUint32(nil, xid)
	closeOp := int32(opcodeCloseSession)
	req = binary.BigEndian.AppendUint32(req, uint32(closeOp))
	if err := writeFrame(c, req); err != nil {
		return err
	}
	for {
		resp, err := readFrame(c)
		if err != nil {
			return fmt.Errorf("no answer to the close request: %w", err)
		}
		if len(resp) < 16 || int32(binary.BigEndian.Uint32(resp[0:4])) != xid {
			continue // a ping or a notification
		}
		// ReplyHeader: xid, zxid, err.
		switch code := int32(binary.BigEndian.Uint32(resp[12:16])); code {
		case 0:
			return nil
		case -112: // session expired
			return errNoSession
		default:
			return fmt.Errorf("ZooKeeper refused the close request with error code %d", code)
		}
	}
}

// maxFrame bounds the frames closeAt reads: a connect response or a
// reply header.
const maxFrame = 1 << 16

func writeFrame(w io.Writer, body []byte) error {
	_, err := w.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...))
	return err
}

func readFrame(r io.Reader) ([]byte, error) {
	var size [4]byte
	if _, err := io.ReadFull(r, size[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(size[:])
	if n > maxFrame {
		return nil, fmt.Errorf("frame of %d bytes from ZooKeeper: too large", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return body, nil
}
