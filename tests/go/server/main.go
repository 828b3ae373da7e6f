// Test server for Blindspot's HTTP capture tests: every route answers in a way the test can predict
// (status, body size), so each captured row can be checked exactly.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

var version = flag.String("version", "v1", "value of the X-Served-By response header")

func hello(w http.ResponseWriter, r *http.Request) {
	io.WriteString(w, "hello world\n")
}

// /status/<code>: answers with that status and the body "status <code>\n".
func status(w http.ResponseWriter, r *http.Request) {
	code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
	if err != nil || code < 200 || code > 599 {
		code = 400
	}
	w.WriteHeader(code)
	fmt.Fprintf(w, "status %d\n", code)
}

// /bytes/<n>: n bytes of body, with a Content-Length.
func nbytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/bytes/"))
	if err != nil || n < 0 || n > 1<<24 {
		http.Error(w, "bad size", 400)
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(n))
	w.Write([]byte(strings.Repeat("x", n)))
}

// /echo: reads the whole request body and answers with as many bytes.
func echo(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Write(b)
}

func users(w http.ResponseWriter, r *http.Request) {
	io.WriteString(w, "user\n")
}

func slow(w http.ResponseWriter, r *http.Request) {
	time.Sleep(20 * time.Millisecond)
	io.WriteString(w, "slow\n")
}

func boom(w http.ResponseWriter, r *http.Request) {
	panic("test handler panic")
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	mux := http.NewServeMux()
	register(mux) // routes_*.go: patterns with wildcards on Go 1.22+, prefixes before
	h := http.Handler(mux)
	h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Served-By", *version)
		mux.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// The test reads the port from this line.
	fmt.Printf("LISTEN %s\n", ln.Addr())
	srv := &http.Server{Handler: h, ErrorLog: nil}
	srv.Serve(ln)
}
