package main

// A gRPC gateway for Blindspot's gRPC linking test (tests/test_go_grpc_link.py): a health server whose
// Check calls one of two upstream health servers, picked by the inbound x-gray-version metadata
// ("v1" -> -up1, anything else -> -up2), forwarding x-gray-version and x-request-id, on the handler's
// own goroutine (version "v2-async": from a child goroutine the handler waits for, which Blindspot
// cannot link). Upstream connections are dialed at their first call (after the agent traces us).
// And grpc-fanout: a client taking lines "<id>:<version>\t..." -> those Check calls at once on one
// connection (x-request-id <id>, x-gray-version <version>) -> "RESULT <grpc codes>".

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

var (
	gatewayUp1 = flag.String("up1", "", "grpc-gateway: upstream for x-gray-version v1")
	gatewayUp2 = flag.String("up2", "", "grpc-gateway: upstream for other versions")
)

type gateway struct {
	healthpb.UnimplementedHealthServer
	mu    sync.Mutex
	conns map[string]healthpb.HealthClient
}

func (g *gateway) client(target string) healthpb.HealthClient {
	g.mu.Lock()
	defer g.mu.Unlock()
	c, ok := g.conns[target]
	if !ok {
		conn, err := grpc.Dial(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			panic(err)
		}
		c = healthpb.NewHealthClient(conn)
		g.conns[target] = c
	}
	return c
}

func (g *gateway) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	version := ""
	if v := md.Get("x-gray-version"); len(v) > 0 {
		version = v[0]
	}
	target := *gatewayUp2
	if version == "v1" {
		target = *gatewayUp1
	}
	out := metadata.MD{}
	for _, k := range []string{"x-gray-version", "x-request-id"} {
		if v := md.Get(k); len(v) > 0 {
			out.Set(k, v...)
		}
	}
	octx := metadata.NewOutgoingContext(ctx, out)
	c := g.client(target)
	if version == "v2-async" {
		type answer struct {
			resp *healthpb.HealthCheckResponse
			err  error
		}
		ch := make(chan answer, 1)
		go func() {
			resp, err := c.Check(octx, req)
			ch <- answer{resp, err}
		}()
		a := <-ch
		return a.resp, a.err
	}
	return c.Check(octx, req)
}

func grpcGateway(addr string) {
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, &gateway{conns: map[string]healthpb.HealthClient{}})
	fmt.Fprintln(os.Stderr, s.Serve(listen(addr)))
}

func grpcFanout(target string) {
	var c healthpb.HealthClient
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("READY")
	for in.Scan() {
		if c == nil {
			conn, err := grpc.Dial(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				panic(err)
			}
			c = healthpb.NewHealthClient(conn)
		}
		calls := strings.Split(in.Text(), "\t")
		codes := make([]string, len(calls))
		var wg sync.WaitGroup
		for i, call := range calls {
			wg.Add(1)
			go func(i int, id, version string) {
				defer wg.Done()
				ctx := metadata.AppendToOutgoingContext(context.Background(), "x-request-id", id,
					"x-gray-version", version)
				_, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: "up"})
				codes[i] = fmt.Sprint(int(status.Code(err)))
			}(i, strings.Split(call, ":")[0], strings.Split(call+":", ":")[1])
		}
		wg.Wait()
		fmt.Println("RESULT", strings.Join(codes, " "))
	}
}
