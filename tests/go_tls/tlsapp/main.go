// Test program for Blindspot's Go TLS capture (tests/test_go_tls.py): an HTTPS server that speaks
// HTTP/1.1 only (no h2 via ALPN), and an HTTPS client driven line by line from stdin, so the test can
// start it before or after the agent and decide when each request is made.
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func serve(addr string, h2 bool) {
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello tls\n") })
	// /status/<code>: that status, body "status <code>\n".
	mux.HandleFunc("/status/", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
		if err != nil || code < 200 || code > 599 {
			code = 400
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "status %d\n", code)
	})
	// /echo: the request body back, with a Content-Length.
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Write(b)
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("LISTEN %s\n", ln.Addr())
	srv := &http.Server{
		Handler:      mux,
		TLSConfig:    &tls.Config{Certificates: []tls.Certificate{selfSigned()}},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){}, // HTTP/1.1 only
	}
	if h2 {
		srv.TLSNextProto = nil // net/http's default: h2 by ALPN
	}
	fmt.Fprintln(os.Stderr, srv.ServeTLS(ln, "", ""))
}

// client: each stdin line "METHOD URL BODYLEN [Header: value]..." (fields separated by tabs) makes
// one request on a keep-alive HTTP/1.1 connection; it prints "RESULT <status> <body bytes>".
func client(h2 bool) {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: h2,
		DisableCompression: true}
	c := &http.Client{Transport: tr}
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("READY")
	for in.Scan() {
		f := strings.Split(in.Text(), "\t")
		if len(f) < 3 {
			fmt.Println("RESULT 0 0")
			continue
		}
		n, _ := strconv.Atoi(f[2])
		var body io.Reader
		if n > 0 {
			body = strings.NewReader(strings.Repeat("b", n))
		}
		req, err := http.NewRequest(f[0], f[1], body)
		if err != nil {
			fmt.Println("RESULT 0 0")
			continue
		}
		for _, h := range f[3:] {
			k, v, _ := strings.Cut(h, ": ")
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			fmt.Println("RESULT 0 0", err)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("RESULT %d %d\n", resp.StatusCode, len(b))
	}
}

func main() {
	mode := flag.String("mode", "server", "server | client")
	addr := flag.String("addr", "127.0.0.1:0", "listen address (server)")
	h2 := flag.Bool("h2", false, "offer / attempt HTTP/2 by ALPN (default: HTTP/1.1 only)")
	url := flag.String("url", "", "load: the URL")
	n := flag.Int("n", 1000, "load: requests")
	c := flag.Int("c", 8, "load: concurrent connections")
	rate := flag.Float64("rate", 0, "load: requests/s in all (0: saturate)")
	flag.Parse()
	if *mode == "load" {
		load(*url, *n, *c, *rate, *h2)
		return
	}
	if *mode == "client" {
		client(*h2)
		return
	}
	serve(*addr, *h2)
}
