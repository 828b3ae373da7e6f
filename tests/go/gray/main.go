// One executable, several roles (as many Go services ship): the gray-release tests start the router,
// its upstream versions and the load client from this one file, so they share its inode and its uprobes.
//
//	gray -role router -v1 URL -v2 URL [-split 20]   httputil.ReverseProxy: X-Gray-Version picks the
//	                                                upstream; without it, -split percent go to v2
//	                                                (spread by arrival order, so a test can predict it)
//	gray -role upstream -version v1 [-next URL]     answers "<version>\n"; with -next, first calls
//	                                                next+path (the next hop) and fails with its status
//	gray -role load -url URL -n 300 -c 8            sends n GETs at once from start, X-Request-ID
//	                                                load-<i>, X-Gray-Version v1/v2/none by i%3; prints
//	                                                one JSON line per request, in order
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
)

func listen(addr string) net.Listener {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("LISTEN %s\n", ln.Addr())
	return ln
}

func router(addr, v1, v2 string, split int) {
	u1, err1 := url.Parse(v1)
	u2, err2 := url.Parse(v2)
	if err1 != nil || err2 != nil {
		fmt.Fprintln(os.Stderr, "bad -v1/-v2")
		os.Exit(2)
	}
	var n atomic.Int64
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		version := r.In.Header.Get("X-Gray-Version")
		if version != "v1" && version != "v2" {
			if int(n.Add(1)-1)*split%100 < split {
				version = "v2"
			} else {
				version = "v1"
			}
		}
		target := u1
		if version == "v2" {
			target = u2
		}
		r.SetURL(target)
		r.Out.Header.Set("X-Routed-To", version)
	}}
	http.Serve(listen(addr), proxy)
}

func upstream(addr, version, next string) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	h := func(w http.ResponseWriter, r *http.Request) {
		if next != "" {
			out, err := http.NewRequestWithContext(r.Context(), "GET", next+r.URL.RequestURI(), nil)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			for _, k := range []string{"X-Gray-Version", "X-Request-ID"} {
				if v := r.Header.Get(k); v != "" {
					out.Header.Set(k, v)
				}
			}
			resp, err := client.Do(out)
			if err != nil {
				http.Error(w, err.Error(), 502)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				w.WriteHeader(resp.StatusCode)
			}
		}
		w.Header().Set("X-Served-By", version)
		io.WriteString(w, version+"\n")
	}
	http.Serve(listen(addr), http.HandlerFunc(h))
}

type result struct {
	Status int    `json:"status"`
	Error  string `json:"error,omitempty"`
}

func load(target string, n, conc int) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc}}
	out := make([]result, n)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			req, err := http.NewRequest("GET", fmt.Sprintf("%s/users/%d", target, i), nil)
			if err != nil {
				out[i] = result{Error: err.Error()}
				return
			}
			req.Header.Set("X-Request-ID", fmt.Sprintf("load-%d", i))
			if v := []string{"v1", "v2", ""}[i%3]; v != "" {
				req.Header.Set("X-Gray-Version", v)
			}
			resp, err := client.Do(req)
			if err != nil {
				out[i] = result{Error: err.Error()}
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			out[i] = result{Status: resp.StatusCode}
		}(i)
	}
	wg.Wait()
	enc := json.NewEncoder(os.Stdout)
	for _, r := range out {
		enc.Encode(r)
	}
}

func main() {
	role := flag.String("role", "", "router | upstream | load")
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	v1 := flag.String("v1", "", "router: base URL of upstream v1")
	v2 := flag.String("v2", "", "router: base URL of upstream v2")
	split := flag.Int("split", 20, "router: percent of requests without X-Gray-Version sent to v2")
	version := flag.String("version", "v1", "upstream: the version it answers with")
	next := flag.String("next", "", "upstream: base URL of the next hop, called for every request")
	target := flag.String("url", "", "load: base URL")
	n := flag.Int("n", 300, "load: requests")
	conc := flag.Int("c", 8, "load: requests in flight at once")
	flag.Parse()
	switch *role {
	case "router":
		router(*addr, *v1, *v2, *split)
	case "upstream":
		upstream(*addr, *version, *next)
	case "load":
		load(*target, *n, *conc)
	default:
		fmt.Fprintln(os.Stderr, "-role router|upstream|load")
		os.Exit(2)
	}
}
