package main

// load: the bench's load generator (bench/bench_go_tls.py): n requests from c goroutines, each
// paced to rate/c requests per second (rate 0: as fast as possible), over keep-alive connections.
// Prints "DONE <requests> <errors> <seconds> <p50 us> <p99 us>".

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"time"
)

func load(url string, n, c int, rate float64, h2 bool) {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: h2,
		MaxIdleConnsPerHost: c, DisableCompression: true}
	cl := &http.Client{Transport: tr}
	lat := make([][]time.Duration, c)
	errs := make([]int, c)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var gap time.Duration
			if rate > 0 {
				gap = time.Duration(float64(time.Second) * float64(c) / rate)
			}
			next := time.Now()
			for i := w; i < n; i += c {
				if gap > 0 {
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
					next = next.Add(gap)
				}
				t0 := time.Now()
				resp, err := cl.Get(url)
				if err != nil {
					errs[w]++
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat[w] = append(lat[w], time.Since(t0))
			}
		}(w)
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	var all []time.Duration
	nerr := 0
	for w := range lat {
		all = append(all, lat[w]...)
		nerr += errs[w]
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	p := func(q float64) int64 {
		if len(all) == 0 {
			return 0
		}
		return all[int(q*float64(len(all)-1))].Microseconds()
	}
	fmt.Printf("DONE %d %d %.3f %d %d\n", len(all), nerr, secs, p(0.5), p(0.99))
}
