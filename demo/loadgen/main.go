// Demo load generator for compose.yaml: steady traffic through the gray-release router so the
// dashboards fill. A mix of routes, some requests pinned to a version with X-Gray-Version, and both
// browser-like and service User-Agents (the Overview dashboard separates them).
package main

import (
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"time"
)

func main() {
	target := flag.String("target", "http://router:8080", "base URL of the router")
	rate := flag.Int("rate", 50, "requests per second")
	probe := flag.String("probe", "", "health check: GET this URL, exit 0 on any HTTP answer")
	flag.Parse()
	if *probe != "" { // distroless images have no shell or curl: the compose health checks use this
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(*probe)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		resp.Body.Close()
		os.Exit(0)
	}
	paths := []string{"/hello", "/users/42", "/users/7", "/bytes/2048", "/status/200", "/status/404",
		"/status/503", "/slow", "/echo"}
	agents := []string{"Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", "Go-http-client/1.1",
		"curl/8.5.0", "checkout-service/2.3"}
	client := &http.Client{Timeout: 10 * time.Second}
	tick := time.NewTicker(time.Second / time.Duration(max(*rate, 1)))
	defer tick.Stop()
	for range tick.C {
		go func() {
			req, err := http.NewRequest("GET", *target+paths[rand.Intn(len(paths))], nil)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return
			}
			req.Header.Set("User-Agent", agents[rand.Intn(len(agents))])
			switch n := rand.Intn(10); {
			case n == 0:
				req.Header.Set("X-Gray-Version", "v2")
			case n == 1:
				req.Header.Set("X-Gray-Version", "v1")
			}
			resp, err := client.Do(req)
			if err != nil {
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}()
	}
}
