package replica_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

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
			got, body := get(t, h, "/v1/services/db/"+check)
			if got != code {
				t.Errorf("%s: GET /v1/services/db/%s = %d %v, want %d", id, check, got, body, code)
			}
			// Only a passing primary check says how long it holds: more
			// than nothing, and no more than a TTL.
			v, has := body["valid_for_ms"]
			switch {
			case check != "primary" || got != 200:
				if has {
					t.Errorf("%s: GET /v1/services/db/%s = %d with valid_for_ms %v, want none", id, check, got, v)
				}
			case !has:
				t.Errorf("%s: GET /v1/services/db/primary = 200 %v without valid_for_ms", id, body)
			default:
				ms, isNum := v.(float64)
				if !isNum || ms <= 0 || ms > float64(ttl.Milliseconds()) || ms != float64(int64(ms)) {
					t.Errorf("%s: GET /v1/services/db/primary: valid_for_ms = %v, want a whole number in (0, %d]", id, v, ttl.Milliseconds())
				}
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
	// while it still does, nor before the time its last passing answer
	// promised (its send time plus valid_for_ms).
	c.srv.Isolate(prim, true)
	var promised time.Time
	eventually(t, 10*ttl, func() error {
		sent := time.Now()
		old, body := get(t, api[prim], "/v1/services/db/primary")
		if ms, ok := body["valid_for_ms"].(float64); ok && old == 200 {
			promised = sent.Add(time.Duration(ms) * time.Millisecond)
		}
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
	if promised.IsZero() {
		t.Fatalf("the cut-off primary %s never answered 200 with valid_for_ms", prim)
	}
	eventually(t, 10*ttl, func() error {
		for id, h := range api {
			if id == prim {
				continue
			}
			if got, _ := get(t, h, "/v1/services/db/primary"); got == 200 {
				if answered := time.Now(); answered.Before(promised) {
					t.Fatalf("%s passes the primary check %v before the time the cut-off %s promised", id, promised.Sub(answered), prim)
				}
				t.Logf("%s passes the primary check %v after the time the cut-off %s promised", id, time.Since(promised).Round(time.Millisecond), prim)
				return nil
			}
		}
		return fmt.Errorf("no other node passes the primary check yet")
	})
	c.srv.Isolate(prim, false)
}
