/* SPDX-License-Identifier: Apache-2.0
 * Records sent from bpf/go_tls.c to agent/go_tls_source.py: struct tls_event through ring buffer
 * `tls_events` (variable size: the header and data_len bytes of data), struct tls_proc_event through
 * `tls_procs`. User space mirrors them in agent/_go_tls_event.py; tests/test_go_tls_unit.py checks it.
 */
#ifndef BLINDSPOT_GO_TLS_EVENT_H
#define BLINDSPOT_GO_TLS_EVENT_H

#ifndef BS_TLS_DATA_MAX
#define BS_TLS_DATA_MAX 16384 /* plaintext bytes kept of one Read/Write: a whole TLS record (power of two) */
#endif

#define BS_TLS_DATA 1 /* struct tls_event: the plaintext of one crypto/tls.(*Conn).Read or Write */
#define BS_TLS_PROC_EXEC 2 /* struct tls_proc_event: a process called exec */
#define BS_TLS_GRPC_LINK 3 /* struct grpc_link_event: a gRPC handler's goroutine opened an outbound stream */

/* tls_event.dir */
#define BS_TLS_READ 1  /* (*Conn).Read returned len bytes (probe at its RET instructions) */
#define BS_TLS_WRITE 2 /* (*Conn).Write was called with len bytes (entry probe) */

/* tls_event.flags */
#define BS_TLS_F_ADDR (1u << 0) /* addresses read from the socket behind fd */
#define BS_TLS_F_CUT (1u << 1)  /* len > data_len: the data was cut at BS_TLS_DATA_MAX */
#define BS_TLS_F_PLAIN (1u << 2) /* net.(*conn).Read/Write of an h2c connection (conn is the *net.conn) */
#define BS_TLS_F_MORE (1u << 3)  /* a record F_CONT of this connection and direction follows (HTTP/2 only) */
#define BS_TLS_F_CONT (1u << 4)  /* continues the previous record's call: len = its bytes from this chunk on */

#ifndef BS_TLS_CHUNKS
#define BS_TLS_CHUNKS 4 /* records of at most BS_TLS_DATA_MAX bytes per call on an HTTP/2 connection */
#endif

/* tls_stats slots (per-CPU __u64) */
#define BS_TLS_STAT_EMITTED 0      /* data records submitted */
#define BS_TLS_STAT_LOST_RINGBUF 1 /* ring buffer full: a record was lost */
#define BS_TLS_STAT_HITS 2         /* probe hits of traced processes (entry + return) */
#define BS_TLS_STAT_READ_LOST 3    /* a Read's return without its entry (table full, or attached mid-call) */
#define BS_TLS_STAT_AUX_FULL 4     /* read-in-flight table full: a Read is missed */
#define BS_TLS_STAT_H2C_CONNS 5   /* cleartext connections that began with the HTTP/2 preface */
#define BS_TLS_STAT_H2C_UNTRACKED 6 /* net reads/writes that look like HTTP/2 frames on a connection not seen from its start */
#define BS_TLS_STAT_GRPC_INBOUND 7 /* handleStream entries: an inbound gRPC stream's handler goroutine */
#define BS_TLS_STAT_GRPC_NO_HANDLER 8 /* outbound gRPC streams opened on a goroutine no handleStream began */
#define BS_TLS_STAT_GRPC_LINKS 9 /* link records submitted */
#define BS_TLS_STAT_RINGBUF_RETRIED 10 /* an output or reservation refused once, made by the second try */
#define BS_TLS_STAT_N 11

struct tls_event {
	__u32 kind;      /* BS_TLS_DATA */
	__u32 pid;       /* tgid */
	__u32 tid;
	__s32 fd;        /* the connection's fd (tls.Conn -> net.TCPConn -> netFD), -1 if unknown */
	__u64 ts_ns;     /* CLOCK_MONOTONIC ns */
	__u64 conn;      /* the *tls.Conn: one per TLS connection while it lives */
	__u64 goroutine; /* runtime.g of the caller (R14) */
	__u32 len;       /* bytes the call moved (Read: returned; Write: asked to write) */
	__u16 data_len;  /* bytes in data */
	__u8 dir;        /* BS_TLS_READ / BS_TLS_WRITE */
	__u8 flags;      /* BS_TLS_F_* */
	__u8 saddr[16];  /* local address, network order; IPv4 in the first 4 bytes */
	__u8 daddr[16];  /* remote address */
	__u16 sport;     /* local port, host order */
	__u16 dport;     /* remote port, host order */
	__u16 family;    /* AF_INET / AF_INET6, 0 unknown */
	__u16 _pad;
	char comm[16];
	char data[BS_TLS_DATA_MAX];
};

#define BS_TLS_HEADER_SIZE 104
_Static_assert(sizeof(struct tls_event) == BS_TLS_HEADER_SIZE + BS_TLS_DATA_MAX, "shared with user space");

struct tls_proc_event {
	__u32 kind; /* BS_TLS_PROC_EXEC */
	__u32 pid;
};

/* Through tls_events too (first field kind = BS_TLS_GRPC_LINK), so that it comes after the read of the
 * inbound stream's HEADERS and before the outbound stream's response, in the one ring buffer's order. */
struct grpc_link_event {
	__u32 kind;     /* BS_TLS_GRPC_LINK */
	__u32 pid;      /* tgid */
	__u64 ts_ns;    /* CLOCK_MONOTONIC ns */
	__u64 goid;     /* runtime.g.goid of the handler goroutine */
	__u64 in_conn;  /* the inbound stream's connection (the net.Conn data word of http2Server.conn) */
	__u64 out_conn; /* the outbound stream's connection (http2Client.conn) */
	__u32 in_sid;   /* inbound HTTP/2 stream id */
	__u32 out_sid;  /* outbound HTTP/2 stream id */
};

#define BS_TLS_LINK_SIZE 48
_Static_assert(sizeof(struct grpc_link_event) == BS_TLS_LINK_SIZE, "shared with user space");

#endif /* BLINDSPOT_GO_TLS_EVENT_H */
