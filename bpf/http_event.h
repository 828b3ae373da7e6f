/* SPDX-License-Identifier: Apache-2.0
 * Records sent from bpf/http_trace.c to agent/http_source.py: struct http_event through ring buffer
 * `events` (one size, read in bulk), struct http_proc through `proc_events`. Every record starts
 * with a __u32 kind. User space mirrors them in agent/_http_event.py;
 * tests/test_http_unit.py checks the sizes agree.
 */
#ifndef BLINDSPOT_HTTP_EVENT_H
#define BLINDSPOT_HTTP_EVENT_H

#define BS_COMM_LEN 16
#ifndef BS_HTTP_HEAD_MAX
#define BS_HTTP_HEAD_MAX 1024 /* bytes of a request head kept (power of two) */
#endif
#define BS_HTTP_STATUS_MAX 32 /* bytes of a response head kept: the status line */
#define BS_HTTP_ROUTE_MAX 128 /* bytes of a Go ServeMux pattern kept */
#define BS_HTTP_EXEC_PATH_MAX 128 /* bytes of an exec'd path kept (a process gone before user space saw it) */

/* record kinds (first __u32 of every record) */
#define BS_HTTP_EXCHANGE 1 /* struct http_event: one request and its response, or what was seen of it */
#define BS_HTTP_PROC_EXEC 2 /* struct http_proc: a process called exec (is it a Go program?) */
#define BS_HTTP_PROC_EXIT 3 /* struct http_proc: a traced process exited */

/* http_event.role */
#define BS_HTTP_CLIENT 1 /* this process wrote the request head */
#define BS_HTTP_SERVER 2 /* this process read the request head */

/* http_event.end_reason: what showed the exchange was over */
#define BS_HTTP_END_IDLE 1  /* a read after the response found nothing (EAGAIN) or EOF */
#define BS_HTTP_END_NEXT 2  /* the next request head on the same connection */
#define BS_HTTP_END_CLOSE 3 /* close() of the connection's fd */
#define BS_HTTP_END_QUIET 4 /* user space: nothing moved for a while after the response (or exit) */

/* http_event.flags */
#define BS_HTTP_F_HEAD_TRUNC (1u << 0)  /* the request head was longer than BS_HTTP_HEAD_MAX here */
#define BS_HTTP_F_ADDR (1u << 1)        /* addresses read from the socket behind the fd */
#define BS_HTTP_F_GO_SERVER (1u << 2)   /* Go uprobe saw this served request (route, goroutine) */
#define BS_HTTP_F_GO_CLIENT (1u << 3)   /* Go uprobe saw the goroutine that made this request */
#define BS_HTTP_F_HELD_BYTE (1u << 4)   /* head's first byte came in a 1-byte read before it */

/* stats array slots (per-CPU __u64) */
#define BS_HTTP_STAT_EMITTED 0     /* exchange records submitted */
#define BS_HTTP_STAT_LOST_RINGBUF 1 /* ring buffer full: a record was lost */
#define BS_HTTP_STAT_LOST_MAP_FULL 2 /* connection table full: a connection is not tracked */
#define BS_HTTP_STAT_UPROBE_HITS 3  /* Go uprobe hits */
#define BS_HTTP_STAT_AUX_MAP_FULL 4 /* syscall-in-flight or Go client mark table full: an exchange may be missed */
#define BS_HTTP_STAT_PIDS_FULL 5    /* traced-process table full at exec: a process is traced late or not at all */
#define BS_HTTP_STAT_RINGBUF_RETRIED 6 /* an output or reservation refused once, made by the second try */
#define BS_HTTP_STAT_N 7

struct http_event {
	__u32 kind;          /* BS_HTTP_EXCHANGE */
	__u32 pid;           /* tgid */
	__u32 tid;           /* thread that moved the request head */
	__s32 fd;            /* the connection's file descriptor in pid */
	__u64 start_ns;      /* CLOCK_MONOTONIC ns: exit of the syscall that moved the request head */
	__u64 resp_start_ns; /* CLOCK_MONOTONIC ns: the response head moved; 0 if no response */
	__u64 end_ns;        /* CLOCK_MONOTONIC ns: last response byte moved; without one, the end seen */
	__u64 req_bytes;     /* bytes of the request (head + body) as the syscalls moved them */
	__u64 resp_bytes;    /* bytes of the response (head + body) */
	__u64 goroutine;     /* Go: runtime.g address serving (server) or making (client) it; 0 unknown */
	__u8 saddr[16];      /* local address, network order; IPv4 in the first 4 bytes */
	__u8 daddr[16];      /* remote address, network order; IPv4 in the first 4 bytes */
	__u16 sport;         /* local port, host order */
	__u16 dport;         /* remote port, host order */
	__u16 family;        /* AF_INET (2) or AF_INET6 (10); 0 if not known */
	__u16 head_len;      /* valid bytes in head */
	__u16 status_len;    /* valid bytes in status */
	__u16 route_len;     /* valid bytes in route */
	__u8 role;           /* BS_HTTP_CLIENT / BS_HTTP_SERVER */
	__u8 end_reason;     /* BS_HTTP_END_* */
	__u8 held_byte;      /* with BS_HTTP_F_HELD_BYTE: the head's first byte */
	__u8 _pad;
	__u32 flags;         /* BS_HTTP_F_* */
	__u32 _pad2;
	char comm[BS_COMM_LEN];           /* the thread's comm at the request head */
	char status[BS_HTTP_STATUS_MAX];  /* first bytes of the response head */
	char route[BS_HTTP_ROUTE_MAX];    /* Go ServeMux pattern as registered (uprobe), else empty */
	char head[BS_HTTP_HEAD_MAX];      /* first bytes of the request head, verbatim */
};

_Static_assert(sizeof(struct http_event) == 296 + BS_HTTP_HEAD_MAX, "struct http_event is shared with user space");

/* http_proc.flags (exec): what the kernel did at exec, from the executable's entry in `exes` */
#define BS_HTTP_EXEC_TRACED (1u << 0)  /* known Go executable: traced from exec, with its offsets */
#define BS_HTTP_EXEC_PENDING (1u << 1) /* executable not known yet: traced, offsets unknown, until user space decides */
#define BS_HTTP_EXEC_NO_INODE (1u << 2) /* the executable's inode could not be read */

/* go_proc.state (maps `pids` and `exes`) */
#define BS_GO_READY 0      /* offsets valid (-1 = that field unknown) */
#define BS_GO_PENDING 1    /* traced since exec; the executable is being read */
#define BS_GO_NOT_TRACED 2 /* `exes` only: not a Go program we trace; its processes are not traced */

struct http_proc {
	__u32 kind;  /* BS_HTTP_PROC_EXEC / BS_HTTP_PROC_EXIT */
	__u32 pid;   /* tgid */
	__u64 ts_ns; /* CLOCK_MONOTONIC ns */
	__u64 dev;   /* exec: the executable's super_block s_dev (kernel encoding: major << 20 | minor) */
	__u64 ino;   /* exec: the executable's inode number */
	__u32 flags; /* exec: BS_HTTP_EXEC_* */
	__u32 _pad;
	char filename[BS_HTTP_EXEC_PATH_MAX]; /* exec: the path exec'd, as given (may be cut or relative) */
};

_Static_assert(sizeof(struct http_proc) == 40 + BS_HTTP_EXEC_PATH_MAX, "struct http_proc is shared with user space");

#endif /* BLINDSPOT_HTTP_EVENT_H */
