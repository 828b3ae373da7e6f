package main

// Client-streaming and bidirectional-streaming gRPC (a service written by hand with grpc.ServiceDesc:
// no protoc; its messages are the health package's, so every message's size is known), and gRPC
// over TLS (credentials.NewTLS, ALPN h2), for tests/test_go_h2.py and tests/test_go_tls.py.
//
// Modes: streams-server / streams-tls-server serve this service and the standard health service;
// streams-client / streams-tls-client read lines from stdin:
//
//	check\t<service>\t[key: value]...        Health.Check (unary)          -> RESULT <code> <serving>
//	collect\t<s1,s2,...>\t[key: value]...    Streams/Collect (client streaming): one request per name,
//	                                          then close; one answer         -> RESULT <code> <serving>
//	echo\t<s1,s2,...>\t[key: value]...       Streams/Echo (bidi): one request per name, then close;
//	                                          reads answers to the end       -> RESULT <code> <answers>
//
// The server reads every request to the client's end of stream, then ends the call: with status
// ABORTED (10) when one of the names was "fail", else OK. Collect answers once (SERVING: 7 bytes with
// the gRPC prefix) when OK and not at all otherwise; Echo answers every request as it comes (7 bytes
// each), also when the call then fails.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

var streamsDesc = grpc.ServiceDesc{
	ServiceName: "blindspot.test.Streams",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{
		{StreamName: "Collect", Handler: streamsCollect, ClientStreams: true},
		{StreamName: "Echo", Handler: streamsEcho, ClientStreams: true, ServerStreams: true},
	},
	Metadata: "streams.go",
}

var streamsServing = &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}

// streamsRecv reads requests to the end of the client's stream, calling each(request) per message.
func streamsRecv(ss grpc.ServerStream, each func() error) (failed bool, err error) {
	for {
		m := new(healthpb.HealthCheckRequest)
		if err := ss.RecvMsg(m); err == io.EOF {
			return failed, nil
		} else if err != nil {
			return failed, err
		}
		failed = failed || m.Service == "fail"
		if each != nil {
			if err := each(); err != nil {
				return failed, err
			}
		}
	}
}

func streamsCollect(_ any, ss grpc.ServerStream) error {
	failed, err := streamsRecv(ss, nil)
	if err != nil {
		return err
	}
	if failed {
		return status.Error(codes.Aborted, "a request asked to fail")
	}
	return ss.SendMsg(streamsServing)
}

func streamsEcho(_ any, ss grpc.ServerStream) error {
	failed, err := streamsRecv(ss, func() error { return ss.SendMsg(streamsServing) })
	if err != nil {
		return err
	}
	if failed {
		return status.Error(codes.Aborted, "a request asked to fail")
	}
	return nil
}

func streamsCert() tls.Certificate {
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

func streamsServer(addr string, useTLS bool) {
	var opts []grpc.ServerOption
	if useTLS {
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{streamsCert()}})))
	}
	s := grpc.NewServer(opts...)
	h := health.NewServer()
	h.SetServingStatus("up", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, h)
	s.RegisterService(&streamsDesc, struct{}{})
	fmt.Fprintln(os.Stderr, s.Serve(listen(addr)))
}

func streamsClient(target string, useTLS bool) {
	creds := insecure.NewCredentials()
	if useTLS {
		creds = credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
	}
	var conn *grpc.ClientConn
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("READY")
	for in.Scan() {
		if conn == nil { // connect only when told (old grpc-go's Dial connects at once)
			c, err := grpc.Dial(target, grpc.WithTransportCredentials(creds))
			if err != nil {
				panic(err)
			}
			conn = c
		}
		f := strings.Split(in.Text(), "\t")
		ctx := context.Background()
		for _, kv := range f[2:] {
			k, v, _ := strings.Cut(kv, ": ")
			ctx = metadata.AppendToOutgoingContext(ctx, k, v)
		}
		switch f[0] {
		case "check":
			resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: f[1]})
			serving := -1
			if resp != nil {
				serving = int(resp.Status)
			}
			fmt.Printf("RESULT %d %d\n", int(status.Code(err)), serving)
		case "collect", "echo":
			i := 0
			if f[0] == "echo" {
				i = 1
			}
			code, n := streamsCall(ctx, conn, i, strings.Split(f[1], ","))
			fmt.Printf("RESULT %d %d\n", code, n)
		default:
			fmt.Println("RESULT unknown")
		}
	}
}

// streamsCall sends one request per name on a new stream of method i, closes, and reads the answers:
// (gRPC code, serving status of Collect's answer or -1 | number of Echo's answers).
func streamsCall(ctx context.Context, conn *grpc.ClientConn, i int, names []string) (int, int) {
	d := &streamsDesc.Streams[i]
	cs, err := conn.NewStream(ctx, d, "/"+streamsDesc.ServiceName+"/"+d.StreamName)
	if err != nil {
		return int(status.Code(err)), -1
	}
	for _, name := range names {
		if err := cs.SendMsg(&healthpb.HealthCheckRequest{Service: name}); err != nil {
			break // the status comes from RecvMsg
		}
	}
	if err := cs.CloseSend(); err != nil {
		return int(status.Code(err)), -1
	}
	n := 0
	for {
		m := new(healthpb.HealthCheckResponse)
		err := cs.RecvMsg(m)
		if err == io.EOF {
			return 0, n
		}
		if err != nil {
			if d.ServerStreams {
				return int(status.Code(err)), n
			}
			return int(status.Code(err)), -1
		}
		if !d.ServerStreams {
			return 0, int(m.Status) // RecvMsg of a non-server-streaming call already read to the end
		}
		n++
	}
}

func streamsMode(mode, addr string) {
	useTLS := strings.Contains(mode, "-tls-")
	if strings.HasSuffix(mode, "-server") {
		streamsServer(addr, useTLS)
	} else {
		streamsClient(addr, useTLS)
	}
}
