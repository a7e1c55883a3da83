package replica

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/concordha/concord/core"
)

// HealthAPI answers the checks of load balancers and operators, without
// authentication (they disclose roles, not state):
//
//	GET /v1/health                          200 while the process runs; says whether the node has a session
//	GET /v1/services/{service}/primary      200 only where the node is the primary with a valid session and the service serves as primary; 503 elsewhere
//	GET /v1/services/{service}/secondary    200 only on a secondary whose service runs; 503 elsewhere
//	GET /v1/services/{service}/replica      200 on a secondary or spare whose service runs; 503 elsewhere
//	GET /v1/cluster                         the cluster as this node sees it, as JSON
//
// A service unknown here answers 404. The primary check fails as soon as
// the node's session is in doubt (core.Node.Fence), before the store can
// expire it, so a load balancer stops sending to a primary that is being
// replaced.
//
// A primary check that passes also says, in "valid_for_ms", for how long
// at least the role is certain to stay here (core.Node.FenceUntil): a 200
// with valid_for_ms = N proves, to a caller who sent its request at local
// time t, that this node holds the primary role with a session the store
// cannot expire before t + N ms (barring its own resignation). N is the
// whole milliseconds left, rounded down, from the moment the answer is
// made, which is after t; the caller counts the N ms on its own clock, so
// that only the two clocks' rates, not their settings, need to agree. The
// field is absent when the store's sessions cannot tell their deadline,
// and on every other answer.
func HealthAPI(h *Host) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		members, err := h.node.Members(ctx)
		_, joined := members[h.cfg.Node]
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "node": h.cfg.Node, "joined": err == nil && joined})
	})
	for _, check := range []string{"primary", "secondary", "replica"} {
		mux.HandleFunc("GET /v1/services/{service}/"+check, func(w http.ResponseWriter, r *http.Request) {
			name := r.PathValue("service")
			st, err := h.node.Status(name)
			if errors.Is(err, core.ErrUnknownService) {
				writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
				return
			}
			prole, running := h.providerRole(name)
			ok := false
			var until time.Time
			switch check {
			case "primary":
				var ferr error
				_, until, ferr = h.node.FenceUntil(name)
				ok = ferr == nil && running && prole == core.RolePrimary
			case "secondary":
				ok = st.Role == core.RoleSecondary && running
			case "replica":
				ok = (st.Role == core.RoleSecondary || st.Role == core.RoleSpare) && running && prole != core.RolePrimary
			}
			code := http.StatusServiceUnavailable
			if ok {
				code = http.StatusOK
			}
			body := map[string]any{
				"service": name, "node": h.cfg.Node, "role": st.Role.String(), "primary": st.Primary,
				"epoch": st.Epoch, "token": st.Token, "electing": st.Electing, "running": running,
			}
			if ok && !until.IsZero() {
				// Read now, after the request arrived, and rounded down:
				// the caller's own t + N is no later than until.
				body["valid_for_ms"] = max(time.Until(until).Milliseconds(), 0)
			}
			writeJSON(w, code, body)
		})
	}
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		members, err := h.node.Members(ctx)
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
			return
		}
		type member struct {
			Node     string   `json:"node"`
			Address  string   `json:"address,omitempty"`
			Services []string `json:"services"`
		}
		type secondary struct {
			Node     string `json:"node"`
			AckToken int64  `json:"ack_token,omitempty"`
			AckSeq   int64  `json:"ack_seq,omitempty"`
		}
		type service struct {
			Name        string      `json:"name"`
			Primary     string      `json:"primary,omitempty"`
			Epoch       int64       `json:"epoch"`
			Token       int64       `json:"token"`
			Role        string      `json:"role"` // this node's
			Secondaries []secondary `json:"secondaries"`
		}
		out := struct {
			Node     string    `json:"node"`
			Members  []member  `json:"members"`
			Services []service `json:"services"`
		}{Node: h.cfg.Node, Members: []member{}, Services: []service{}}
		for _, id := range sortedNames(keysOf(members)) {
			m := members[id]
			out.Members = append(out.Members, member{Node: id, Address: m.Address, Services: sortedNames(keysOf(m.Services))})
		}
		for _, name := range h.order {
			st, err := h.node.Status(name)
			if err != nil {
				continue
			}
			ros, _ := h.node.Roster(ctx, name)
			sv := service{Name: name, Primary: st.Primary, Epoch: st.Epoch, Token: st.Token, Role: st.Role.String(), Secondaries: []secondary{}}
			for _, e := range ros.Secondaries {
				if m, ok := members[e.Node]; ok && m.Session == e.Session {
					sv.Secondaries = append(sv.Secondaries, secondary{Node: e.Node, AckToken: e.AckToken, AckSeq: e.AckSeq})
				}
			}
			out.Services = append(out.Services, sv)
		}
		writeJSON(w, http.StatusOK, out)
	})
	return mux
}

// providerRole returns the role the service's provider was brought to and
// whether it runs. An election-only service counts as running in the role
// the node holds.
func (h *Host) providerRole(name string) (core.Role, bool) {
	s, ok := h.svcs[name]
	if !ok {
		return core.RoleNone, false
	}
	ev, role := s.state()
	if s.spec.Provider == nil {
		return ev.Role, ev.Role != core.RoleNone
	}
	return role, role != core.RoleNone
}
