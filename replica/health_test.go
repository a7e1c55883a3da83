package replica_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/concordha/concord/replica"
)

func get(t *testing.T, h http.Handler, path string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("GET %s: %d, body %q: %v", path, rec.Code, rec.Body.String(), err)
	}
	return rec.Code, body
}

// TestHealthAPI: the checks a load balancer uses answer 200 on exactly the
// node in that role, and the primary's check fails as soon as its node
// is cut off from the store.
func TestHealthAPI(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id, svc{name: "db"})
	}
	prim, secs := c.settled("db", 1)
	api := map[string]http.Handler{}
	for id, m := range c.members {
		api[id] = replica.HealthAPI(m.host)
	}
	for id, h := range api {
		want := map[string]int{"primary": 503, "secondary": 503, "replica": 200}
		switch id {
		case prim:
			want = map[string]int{"primary": 200, "secondary": 503, "replica": 503}
		case secs[0]:
			want["secondary"] = 200
		}
		for check, code := range want {
			if got, body := get(t, h, "/v1/services/db/"+check); got != code {
				t.Errorf("%s: GET /v1/services/db/%s = %d %v, want %d", id, check, got, body, code)
			}
		}
		if got, _ := get(t, h, "/v1/services/nope/primary"); got != 404 {
			t.Errorf("%s: unknown service answered %d, want 404", id, got)
		}
		if got, body := get(t, h, "/v1/health"); got != 200 || body["joined"] != true {
			t.Errorf("%s: /v1/health = %d %v", id, got, body)
		}
	}
	code, cl := get(t, api[prim], "/v1/cluster")
	if code != 200 || len(cl["members"].([]any)) != 3 {
		t.Fatalf("/v1/cluster = %d %v", code, cl)
	}
	db := cl["services"].([]any)[0].(map[string]any)
	if db["name"] != "db" || db["primary"] != prim || len(db["secondaries"].([]any)) != 1 {
		t.Fatalf("/v1/cluster's db = %v, want primary %s with one secondary", db, prim)
	}

	// Cut the primary off: its check fails, and no other node's passes
	// while it still does.
	c.srv.Isolate(prim, true)
	eventually(t, 10*ttl, func() error {
		old, _ := get(t, api[prim], "/v1/services/db/primary")
		for id, h := range api {
			if got, _ := get(t, h, "/v1/services/db/primary"); id != prim && got == 200 && old == 200 {
				t.Fatalf("both %s and the cut-off %s pass the primary check", id, prim)
			}
		}
		if old != 503 {
			return fmt.Errorf("the cut-off primary's check still answers %d", old)
		}
		return nil
	})
	c.srv.Isolate(prim, false)
}
