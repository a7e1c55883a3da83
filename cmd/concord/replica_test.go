package main

import "testing"

func TestLocalURL(t *testing.T) {
	for _, tc := range []struct {
		listen string
		tls    bool
		want   string
	}{
		{"127.0.0.1:7101", false, "http://127.0.0.1:7101"},
		{":7101", false, "http://127.0.0.1:7101"},
		{"0.0.0.0:7101", true, "https://127.0.0.1:7101"},
		{"[::]:7101", false, "http://[::1]:7101"},
		{"10.0.0.5:7101", false, "http://10.0.0.5:7101"},
	} {
		if got := localURL(tc.listen, tc.tls); got != tc.want {
			t.Errorf("localURL(%q, %v) = %q, want %q", tc.listen, tc.tls, got, tc.want)
		}
	}
}
