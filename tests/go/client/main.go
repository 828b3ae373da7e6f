// Test client: reads one JSON request per line on stdin, sends them through net/http's default
// Transport (keep-alive, -c of them at a time) and prints one JSON result per line, in input order.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
)

type req struct {
	Method  string            `json:"method"`
	URL     string            `json:"url"`
	Body    int               `json:"body"`
	Headers map[string]string `json:"headers"`
}

type result struct {
	Status int    `json:"status"`
	Bytes  int    `json:"bytes"`
	Error  string `json:"error,omitempty"`
}

func do(c *http.Client, r req) result {
	var body io.Reader
	if r.Body > 0 {
		body = strings.NewReader(strings.Repeat("b", r.Body))
	}
	hr, err := http.NewRequest(r.Method, r.URL, body)
	if err != nil {
		return result{Error: err.Error()}
	}
	for k, v := range r.Headers {
		if strings.EqualFold(k, "Host") {
			hr.Host = v
		} else {
			hr.Header.Set(k, v)
		}
	}
	resp, err := c.Do(hr)
	if err != nil {
		return result{Error: err.Error()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{Status: resp.StatusCode, Bytes: len(b)}
}

func main() {
	conc := flag.Int("c", 1, "requests in flight at once")
	flag.Parse()
	var reqs []req
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var r req
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		reqs = append(reqs, r)
	}
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	out := make([]result, len(reqs))
	sem := make(chan struct{}, *conc)
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int, r req) {
			defer wg.Done()
			out[i] = do(c, r)
			<-sem
		}(i, r)
	}
	wg.Wait()
	enc := json.NewEncoder(os.Stdout)
	for _, r := range out {
		enc.Encode(r)
	}
}
