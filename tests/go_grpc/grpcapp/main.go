// Test program for Blindspot's HTTP/2 capture (tests/test_go_h2.py): gRPC (grpc-go's standard health
// service: no generated code of our own) and h2c (net/http over cleartext HTTP/2, golang.org/x/net/http2/h2c),
// servers and stdin-driven clients, so the test decides when each call is made.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
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

func grpcServer(addr string) {
	s := grpc.NewServer()
	h := health.NewServer()
	h.SetServingStatus("up", healthpb.HealthCheckResponse_SERVING)
	h.SetServingStatus("down", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s, h)
	fmt.Fprintln(os.Stderr, s.Serve(listen(addr)))
}

// Lines: "check\t<service>\t[key: value]..." -> "RESULT <grpc code> <serving status>".
func grpcClient(target string) {
	var c healthpb.HealthClient
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("READY")
	for in.Scan() {
		f := strings.Split(in.Text(), "\t")
		if f[0] == "dial" || c == nil { // connect only when told (old grpc-go's Dial connects at once)
			conn, err := grpc.Dial(target, grpc.WithTransportCredentials(insecure.NewCredentials())) // no NewClient in old grpc-go
			if err != nil {
				panic(err)
			}
			c = healthpb.NewHealthClient(conn)
			if f[0] == "dial" {
				fmt.Println("RESULT dialed")
				continue
			}
		}
		if f[0] == "par" { // "par\t<n>\t<service>": n calls at once on the one connection (x-request-id par-<i>)
			n, _ := strconv.Atoi(f[1])
			var wg sync.WaitGroup
			codes := make([]int, n)
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					ctx := metadata.AppendToOutgoingContext(context.Background(), "x-request-id", fmt.Sprintf("par-%d", i))
					_, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: f[2]})
					codes[i] = int(status.Code(err))
				}(i)
			}
			wg.Wait()
			fmt.Println("RESULT", codes)
			continue
		}
		if f[0] == "watch" { // "watch\t<service>": server streaming; the first answer, then cancel
			ctx, cancel := context.WithCancel(context.Background())
			ctx = metadata.AppendToOutgoingContext(ctx, "x-request-id", "watch")
			w, err := c.Watch(ctx, &healthpb.HealthCheckRequest{Service: f[1]})
			serving := -1
			if err == nil {
				if resp, err := w.Recv(); err == nil {
					serving = int(resp.Status)
				}
			}
			cancel()
			fmt.Printf("RESULT watch %d\n", serving)
			continue
		}
		ctx := context.Background()
		for _, kv := range f[2:] {
			k, v, _ := strings.Cut(kv, ": ")
			ctx = metadata.AppendToOutgoingContext(ctx, k, v)
		}
		resp, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: f[1]})
		st := status.Convert(err)
		serving := -1
		if resp != nil {
			serving = int(resp.Status)
		}
		fmt.Printf("RESULT %d %d\n", int(st.Code()), serving)
	}
}

func h2cServer(addr string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/status/", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
		if err != nil || code < 200 || code > 599 {
			code = 400
		}
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(code)
		fmt.Fprintf(w, "status %d\n", code)
	})
	srv := &http.Server{Handler: h2c.NewHandler(mux, &http2.Server{})}
	fmt.Fprintln(os.Stderr, srv.Serve(listen(addr)))
}

// Lines: "METHOD\tURL\tBODYLEN\t[Header: value]..." -> "RESULT <status> <body bytes>" (prior-knowledge h2c).
func h2cClient() {
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string,
		_ *tls.Config) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	c := &http.Client{Transport: tr}
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("READY")
	for in.Scan() {
		f := strings.Split(in.Text(), "\t")
		n, _ := strconv.Atoi(f[2])
		var body io.Reader
		if n > 0 {
			body = strings.NewReader(strings.Repeat("b", n))
		}
		req, _ := http.NewRequest(f[0], f[1], body)
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
	mode := flag.String("mode", "grpc-server", "grpc-server | grpc-client | h2c-server | h2c-client")
	addr := flag.String("addr", "127.0.0.1:0", "listen address (servers) or target (grpc-client)")
	n := flag.Int("n", 1000, "grpc-load: calls")
	c := flag.Int("c", 8, "grpc-load: concurrent callers")
	rate := flag.Float64("rate", 0, "grpc-load: calls/s in all (0: saturate)")
	flag.Parse()
	switch *mode {
	case "grpc-load":
		grpcLoad(*addr, *n, *c, *rate)
	case "grpc-server":
		grpcServer(*addr)
	case "grpc-client":
		grpcClient(*addr)
	case "h2c-server":
		h2cServer(*addr)
	case "h2c-client":
		h2cClient()
	case "streams-server", "streams-client", "streams-tls-server", "streams-tls-client":
		streamsMode(*mode, *addr) // streams.go
	case "grpc-gateway": // gateway.go
		grpcGateway(*addr)
	case "grpc-fanout":
		grpcFanout(*addr)
	}
}
