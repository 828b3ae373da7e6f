// HTTP load generator for bench/bench_http.py: -c keep-alive connections, each sending on its own
// schedule (-rate/c per second; latency counted from the scheduled send time, so a stalled server
// is not hidden), or as fast as possible with -rate 0. Prints one JSON object.
package main

import (
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"os"
	"sort"
	"sync"
	"time"
)

func main() {
	url := flag.String("url", "", "target URL")
	rate := flag.Float64("rate", 0, "requests/s in total; 0 = as fast as possible")
	conns := flag.Int("c", 16, "connections")
	dur := flag.Duration("d", 5*time.Second, "duration")
	flag.Parse()
	tr := &http.Transport{MaxIdleConnsPerHost: *conns, MaxConnsPerHost: *conns}
	client := &http.Client{Transport: tr}
	var mu sync.Mutex
	var lat []time.Duration
	errors := 0
	start := time.Now()
	end := start.Add(*dur)
	var wg sync.WaitGroup
	for w := 0; w < *conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var mine []time.Duration
			errs := 0
			var interval time.Duration
			next := start
			if *rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(*conns) / *rate)
				next = start.Add(interval * time.Duration(w) / time.Duration(*conns))
			}
			for {
				if *rate > 0 {
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
				} else {
					next = time.Now()
				}
				if next.After(end) {
					break
				}
				resp, err := client.Get(*url)
				if err != nil {
					errs++
				} else {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				mine = append(mine, time.Since(next))
				next = next.Add(interval)
			}
			mu.Lock()
			lat = append(lat, mine...)
			errors += errs
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[int(p*float64(len(lat)-1))].Microseconds())
	}
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"requests": len(lat), "errors": errors, "rps": float64(len(lat)) / el,
		"p50_us": pct(0.50), "p99_us": pct(0.99),
	})
}
