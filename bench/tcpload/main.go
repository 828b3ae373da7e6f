// tcpload makes short-lived TCP connections on loopback, at a fixed rate or as fast as it can,
// and reports exactly how many it completed. Each connection: connect, send -bytes, read the echo
// of the same size, close. Used by bench/bench_tcp.py; not a general load tool.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func serve(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	for {
		c, err := ln.Accept()
		if err != nil {
			continue
		}
		go func(c net.Conn) {
			defer c.Close()
			io.Copy(c, c) // echo until the client half-closes
		}(c)
	}
}

func one(addr string, payload []byte, buf []byte) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(payload); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	_, err = io.ReadFull(c, buf)
	return err
}

func main() {
	mode := flag.String("mode", "client", "server or client")
	addr := flag.String("addr", "127.0.0.1:0", "listen (server) or connect (client) address")
	rate := flag.Int("rate", 0, "connections per second; 0 = as fast as possible")
	workers := flag.Int("workers", 32, "concurrent connections")
	dur := flag.Duration("duration", 5*time.Second, "how long to run")
	size := flag.Int("bytes", 100, "bytes sent (and echoed) per connection")
	flag.Parse()
	if *mode == "server" {
		serve(*addr)
		return
	}
	payload := make([]byte, *size)
	var done, failed atomic.Int64
	deadline := time.Now().Add(*dur)
	tokens := make(chan struct{}, *workers)
	if *rate > 0 {
		go func() {
			interval := time.Second / time.Duration(*rate)
			next := time.Now()
			for time.Now().Before(deadline) {
				next = next.Add(interval)
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				tokens <- struct{}{}
			}
			close(tokens)
		}()
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < *workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, *size)
			for {
				if *rate > 0 {
					if _, ok := <-tokens; !ok {
						return
					}
				} else if time.Now().After(deadline) {
					return
				}
				if err := one(*addr, payload, buf); err != nil {
					failed.Add(1)
				} else {
					done.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"connections": done.Load(), "failed": failed.Load(), "seconds": elapsed,
		"rate": float64(done.Load()) / elapsed,
	})
}
