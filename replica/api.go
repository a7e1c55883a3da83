package replica

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/concordha/concord/core"
)

// LocalAPI is the part of the node API that a service on this node calls:
//
//	POST /v1/services/{service}/checkpoint
//
// takes a checkpoint now and answers 200 {"seq": N, "acks": K} once the
// service's sync_acks secondaries acknowledged it; 503 if this node is
// not the service's primary; 502 if fewer secondaries took it; 504 if the
// acknowledgements did not come in time. Requests must carry "Authorization: Bearer <token>", the token
// concord gives the resource agent in CONCORD_API_TOKEN.
func LocalAPI(h *Host, token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/services/{service}/checkpoint", func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token (CONCORD_API_TOKEN)"})
			return
		}
		seq, acks, err := h.Checkpoint(r.Context(), r.PathValue("service"))
		switch {
		case err == nil:
			writeJSON(w, http.StatusOK, map[string]any{"seq": seq, "acks": acks})
		case errors.Is(err, core.ErrUnknownService):
			writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
		case errors.Is(err, core.ErrNotPrimary):
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		case errors.Is(err, context.DeadlineExceeded):
			writeJSON(w, http.StatusGatewayTimeout, map[string]string{"error": err.Error()})
		default:
			// Not replicated as asked: too few secondaries took it.
			writeJSON(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
		}
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
