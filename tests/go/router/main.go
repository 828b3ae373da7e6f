// Gray-release router: each inbound request goes to upstream v1 or v2. X-Gray-Version picks it;
// without the header, -split percent of requests (spread by arrival order, so tests can predict it) go to
// v2. The inbound request's own headers are NOT forwarded: linking the two must not rely on them.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	v1 := flag.String("v1", "", "base URL of upstream v1")
	v2 := flag.String("v2", "", "base URL of upstream v2")
	split := flag.Int("split", 20, "percent of requests without X-Gray-Version sent to v2")
	flag.Parse()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var n atomic.Int64
	h := func(w http.ResponseWriter, r *http.Request) {
		version := r.Header.Get("X-Gray-Version")
		if version != "v1" && version != "v2" {
			// Spread evenly: arrival i goes to v2 when (i*split) mod 100 < split.
			if int(n.Add(1)-1)*(*split)%100 < *split {
				version = "v2"
			} else {
				version = "v1"
			}
		}
		base := *v1
		if version == "v2" {
			base = *v2
		}
		out, err := http.NewRequestWithContext(r.Context(), r.Method, base+r.URL.RequestURI(), r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		resp, err := client.Do(out)
		if err != nil {
			http.Error(w, err.Error(), 502)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("X-Upstream", version)
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("LISTEN %s\n", ln.Addr())
	http.Serve(ln, http.HandlerFunc(h))
}
