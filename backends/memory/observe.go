package memory

import "github.com/concordha/concord/core"

// Change is one committed write, as OnChange reports it.
type Change struct {
	// Revision is the store revision of the write.
	Revision int64
	Key      string
	// Deleted is true when the write removed the key.
	Deleted bool
	// Prev is the record before the write; zero if the key did not exist.
	Prev core.KV
	// KV is the record after the write; zero when Deleted.
	KV core.KV
	// Client is the name of the client whose call made the change, or ""
	// when the server made it on its own: expiry by deadline, the
	// server's ExpireSession, Close.
	Client string
	// Session is the session the key is bound to when the change comes
	// from a session: a deletion caused by a session ending, or the
	// creation of a key by Register. "" otherwise.
	Session string
}

// OnChange registers fn to be told of every change, synchronously, in
// commit order, while the server is locked: fn must not call the Server
// (nor the cancel function) and should return quickly. The Prev and KV it
// receives are its own copies. cancel stops the reports and is idempotent.
func (s *Server) OnChange(fn func(Change)) (cancel func()) {
	if fn == nil {
		return func() {}
	}
	s.mu.Lock()
	s.lastObs++
	id := s.lastObs
	s.observers = append(s.observers, observer{id: id, fn: fn})
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for i, o := range s.observers {
			if o.id == id {
				s.observers = append(s.observers[:i:i], s.observers[i+1:]...)
				return
			}
		}
	}
}
