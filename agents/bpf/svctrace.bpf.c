// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * svctrace live capture: network syscalls of every process, from syscall
 * tracepoints only (this kernel family has no kprobes/fentry).
 *
 * enter: skip the agent itself and non-socket fds, remember the arguments in
 *        an LRU map keyed by thread (threads killed mid-syscall must not leak).
 * exit:  resolve the socket tuple in the kernel, copy the first `snaplen`
 *        payload bytes and push one record per event into a ring buffer.
 *
 * CO-RE: every kernel struct access goes through BTF relocations, so the
 * object built against one vmlinux.h loads on any kernel with BTF.
 * The record layout below is mirrored by agents/ebpf/records.py (RECORD).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define SOCK_BINDPORT_LOCK 8

#define MAX_SNAP 4096 /* upper bound of the configurable snaplen */
#define MAX_IOV 8     /* iovecs copied per message */
#define MAX_MMSG 8    /* messages reported per sendmmsg/recvmmsg */

/* Our syscall numbers (records.py SYSCALLS is the same list, same order). SC_GETSOCKOPT is
 * getsockopt(SOL_SOCKET, SO_ERROR) only: how a non-blocking connect ended. */
enum sc {
	SC_CONNECT, SC_ACCEPT, SC_ACCEPT4, SC_SENDTO, SC_RECVFROM, SC_SENDMSG, SC_RECVMSG,
	SC_SENDMMSG, SC_RECVMMSG, SC_READ, SC_WRITE, SC_READV, SC_WRITEV, SC_CLOSE, SC_GETSOCKOPT,
};

#define SOL_SOCKET 1
#define SO_ERROR 4

enum flag {
	F_BOUND = 1,     /* the port was bound explicitly (listener or accepted child): server hint */
	F_HAS_ADDR = 2,  /* addr_* holds the sockaddr the process passed or received */
	F_HAS_TUPLE = 4, /* the fd was a socket and the tuple fields are valid */
};

/* Configuration, set by the loader before load (read-only data). */
const volatile __u32 agent_tgid = 0;
const volatile __u32 snaplen = 256;
const volatile __u8 capture_unix = 0;
const volatile __u64 wakeup_bytes = 256 * 1024;

struct tuple {
	__u16 family;
	__u16 sk_type;
	__u16 protocol;
	__u16 lport; /* host order */
	__u16 rport; /* host order */
	__u8 flags;
	__u8 _pad;
	__u32 netns;
	__u8 laddr[16];
	__u8 raddr[16];
};

struct event {
	__u64 ts;        /* CLOCK_MONOTONIC ns at syscall exit */
	__u64 cgroup_id; /* cgroup v2 id */
	__u64 cgroup_v1; /* memory controller cgroup id (v1/v2 hybrid hosts) */
	__s64 ret;
	__u32 pid;
	__u32 tid;
	__s32 fd;
	__u32 size;      /* bytes this event moved */
	__u32 data_len;
	__u16 sc;
	__u16 addr_family;
	__u16 addr_port; /* host order */
	__u8 msg_index;
	__u8 _pad;
	__u8 addr[16];
	struct tuple t;
	char comm[16];
	/* Copies land at off < MAX_SNAP with a length the verifier knows only as
	 * < 2*MAX_SNAP (a mask), hence the slack; records carry data_len bytes. */
	__u8 data[3 * MAX_SNAP];
};

#define EVENT_HDR_SIZE __builtin_offsetof(struct event, data)
/* Bound a length for the verifier: unchanged when <= MAX_SNAP. */
#define BOUNDED(n) ((n) & (2 * MAX_SNAP - 1))

struct inflight {
	__u64 sock;      /* struct socket * of the fd at entry (0 for accept: new fd) */
	__u64 buf;       /* buffer / iovec / msghdr / mmsghdr pointer */
	__u64 count;     /* buffer length / iovcnt / vlen */
	__u64 addr;      /* user sockaddr pointer */
	__u64 addrlen;   /* user socklen_t pointer (recvfrom/accept) or length */
	__s32 fd;
	__u16 sc;
	__u16 _pad;
	struct tuple snap; /* close: the tuple before the fd goes away */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024 * 1024);
} events SEC(".maps");

#define RESERVE_TRIES 4 /* attempts at writing a record while the ring has room */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct inflight);
} inflight SEC(".maps");

/* [0] record not written (ring full or reservation failed), [1] in-flight entry missing at exit
 * (capture started mid-syscall / LRU eviction), [2] those of [0] that failed while the ring had room
 * (the reservation lock gave up: not the reader's fault), [3] records written on a retry after
 * such a failure (so not lost) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event);
} scratch SEC(".maps");

static __always_inline void count_drop(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&drops, &which);
	if (c)
		*c += 1;
}

/* fd -> struct socket *, or 0 when the fd is not a socket. */
static __always_inline struct socket *fd_socket(int fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = 0;

	if (fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f)
		return 0;
	if ((BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	return BPF_CORE_READ(f, private_data);
}

/* Fill the tuple from a socket; 0 when its family is not captured. */
static __always_inline int read_tuple(struct socket *sock, struct tuple *t)
{
	struct sock *sk = BPF_CORE_READ(sock, sk);

	if (!sk)
		return 0;
	t->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (t->family != AF_INET && t->family != AF_INET6 && !(t->family == AF_UNIX && capture_unix))
		return 0;
	t->sk_type = BPF_CORE_READ(sk, sk_type);
	t->protocol = BPF_CORE_READ(sk, sk_protocol);
	t->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	t->flags = F_HAS_TUPLE;
	if (BPF_CORE_READ(sk, sk_userlocks) & SOCK_BINDPORT_LOCK)
		t->flags |= F_BOUND;
	if (t->family == AF_INET) {
		__builtin_memset(t->laddr, 0, 32);
		BPF_CORE_READ_INTO((__u32 *)t->laddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)t->raddr, sk, __sk_common.skc_daddr);
	} else if (t->family == AF_INET6) {
		/* &array: BPF_CORE_READ_INTO copies sizeof(*dst) bytes (16; t->laddr alone would be 1) */
		BPF_CORE_READ_INTO(&t->laddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&t->raddr, sk, __sk_common.skc_v6_daddr);
	}
	if (t->family != AF_UNIX) {
		t->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
		/* A TCP socket reset by its peer leaves the port table: skc_num is 0 by the end of
		 * the syscall that met the reset, while inet_sport still holds the port it had. */
		if (!t->lport)
			t->lport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
		t->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	}
	return 1;
}

static __always_inline int captured_family(struct socket *sock)
{
	__u16 family = BPF_CORE_READ(sock, sk, __sk_common.skc_family);

	return family == AF_INET || family == AF_INET6 || (family == AF_UNIX && capture_unix);
}

/* A user sockaddr (connect target, sendto destination, recvfrom source). */
static __always_inline void read_sockaddr(struct event *e, const void *uaddr, __u32 len)
{
	struct sockaddr_in6 sa = {};

	if (!uaddr || len < sizeof(struct sockaddr_in))
		return;
	if (bpf_probe_read_user(&sa, len < sizeof(sa) ? sizeof(struct sockaddr_in) : sizeof(sa), uaddr))
		return;
	if (sa.sin6_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&sa;
		__builtin_memcpy(e->addr, &in->sin_addr.s_addr, 4);
	} else if (sa.sin6_family == AF_INET6) {
		__builtin_memcpy(e->addr, sa.sin6_addr.in6_u.u6_addr8, 16);
	} else {
		return;
	}
	e->addr_family = sa.sin6_family;
	e->addr_port = bpf_ntohs(sa.sin6_port);
	e->t.flags |= F_HAS_ADDR;
}

static __always_inline __u32 snap_limit(__u64 moved)
{
	__u32 lim = snaplen;
	if (lim > MAX_SNAP)
		lim = MAX_SNAP;
	return moved < lim ? (__u32)moved : lim;
}

/* Copy up to `want` bytes from a flat user buffer. */
static __always_inline void copy_buf(struct event *e, const void *buf, __u64 want)
{
	if (want > MAX_SNAP)
		want = MAX_SNAP;
	if (want && !bpf_probe_read_user(e->data, BOUNDED(want), buf))
		e->data_len = want;
}

/* Copy up to `want` bytes gathered over an iovec array. */
static __always_inline void copy_iov(struct event *e, const struct iovec *iov, __u64 iovcnt, __u64 want)
{
	__u64 off = 0;

#pragma unroll
	for (int i = 0; i < MAX_IOV; i++) {
		struct iovec v;
		__u64 n;

		if (i >= iovcnt || off >= want || off >= MAX_SNAP)
			break;
		if (bpf_probe_read_user(&v, sizeof(v), &iov[i]))
			break;
		n = want - off;
		if (v.iov_len < n)
			n = v.iov_len;
		if (n > MAX_SNAP)
			n = MAX_SNAP;
		if (n && bpf_probe_read_user(&e->data[off & (MAX_SNAP - 1)], BOUNDED(n), v.iov_base))
			break;
		off += n;
	}
	e->data_len = off;
}

static __always_inline struct event *new_event(const struct inflight *st, long ret)
{
	__u32 zero = 0;
	struct event *e = bpf_map_lookup_elem(&scratch, &zero);
	__u64 id = bpf_get_current_pid_tgid();

	if (!e)
		return 0;
	__builtin_memset(e, 0, EVENT_HDR_SIZE);
	e->ts = bpf_ktime_get_ns();
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->ret = ret;
	e->fd = st->fd;
	e->sc = st->sc;
	e->cgroup_id = bpf_get_current_cgroup_id();
	{
		struct task_struct *task = bpf_get_current_task_btf();
		int memcg = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
		if (memcg >= 0 && memcg < CGROUP_SUBSYS_COUNT)
			e->cgroup_v1 = BPF_CORE_READ(task, cgroups, subsys[memcg], cgroup, kn, id);
	}
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

static __always_inline void submit(struct event *e)
{
	__u64 size = EVENT_HDR_SIZE + e->data_len;
	__u64 flags;

	if (size > sizeof(*e))
		return;
	/* Wake a waiting reader once per `wakeup_bytes` crossed, never per record: a
	 * wakeup per event (irq_work + IPI) would cost the traced program more than
	 * the capture itself. Readers also poll on a timer. */
	{
		__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
		flags = (avail < wakeup_bytes && avail + size >= wakeup_bytes) ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	}
	/* A reservation can fail with room in the ring (this kernel's ring lock gives up now and
	 * then): try again a few times before counting a drop; a ring really full fails at once. */
	for (int i = 0; i < RESERVE_TRIES; i++) {
		if (!bpf_ringbuf_output(&events, e, size, flags)) {
			if (i)
				count_drop(3);
			return;
		}
		if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + size + 8 > bpf_ringbuf_query(&events, BPF_RB_RING_SIZE)) {
			count_drop(0);
			return;
		}
	}
	count_drop(0);
	count_drop(2);
}

/* ---- entry side ----------------------------------------------------------- */

static __always_inline int enter(__u16 sc, long fd, __u64 buf, __u64 count, __u64 addr, __u64 addrlen)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct inflight st = {};
	struct socket *sock;

	if ((id >> 32) == agent_tgid)
		return 0;
	sock = fd_socket((int)fd);
	if (!sock)
		return 0;
	st.fd = (int)fd;
	st.sc = sc;
	st.buf = buf;
	st.count = count;
	st.addr = addr;
	st.addrlen = addrlen;
	if (sc == SC_CLOSE) {
		if (!read_tuple(sock, &st.snap))
			return 0;
	} else {
		/* Only the family decides here; the tuple is read at exit, when connect()
		 * has chosen the peer and a first sendto() has bound the local port. */
		if (!captured_family(sock))
			return 0;
		if (sc != SC_ACCEPT && sc != SC_ACCEPT4) /* accept: the new socket is read at exit */
			st.sock = (__u64)sock;
	}
	bpf_map_update_elem(&inflight, &id, &st, BPF_ANY);
	return 0;
}

#define ARG(ctx, i) ((ctx)->args[i])

SEC("tracepoint/syscalls/sys_enter_connect")
int enter_connect(struct trace_event_raw_sys_enter *ctx)
{ return enter(SC_CONNECT, ARG(ctx, 0), 0, 0, ARG(ctx, 1), ARG(ctx, 2)); }

SEC("tracepoint/syscalls/sys_enter_accept")
int enter_accept(struct trace_event_raw_sys_enter *ctx)
{ return enter(SC_ACCEPT, ARG(ctx, 0), 0, 0, ARG(ctx, 1), ARG(ctx, 2)); }

SEC("tracepoint/syscalls/sys_enter_accept4")
int enter_accept4(struct trace_event_raw_sys_enter *ctx)
{ return enter(SC_ACCEPT4, ARG(ctx, 0), 0, 0, ARG(ctx, 1), ARG(ctx, 2)); }

SEC("tracepoint/syscalls/sys_enter_sendto")
int enter_sendto(struct trace_event_raw_sys_enter *ctx)
{ return enter(SC_SENDTO, ARG(ctx, 0), ARG(ctx, 1), ARG(ctx, 2), ARG(ctx, 4), ARG(ctx, 5)); }

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int enter_recvfrom(struct trace_event_raw_sys_enter *ctx)
{ return enter(SC_RECVFROM, ARG(ctx, 0), ARG(ctx, 1), ARG(ctx, 2), ARG(ctx, 4), ARG(ctx, 5)); }

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int enter_sendmsg(struct trace_event_raw_sys_enter *ctx)
{ return enter(SC_SENDMSG, ARG(ctx, 0), ARG(ctx, 1), 0, 0, 0); }

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int enter_recvmsg(struct trace_event_raw_sys_enter *ctx)
{ return enter(SC_RECVMSG, ARG(ctx, 0), ARG(ctx, 1), 0, 0, 0); }

SEC("tracepoint/syscalls/sys_enter_sendmmsg")
int enter_sendmmsg(struct trace_event_raw_sys_enter *ctx)
{ return enter(SC_SENDMMSG, ARG(ctx, 0), ARG(ctx, 1), ARG(ctx, 2), 0, 0); }

SEC("tracepoint/syscalls/sys_enter_recvmmsg")
int enter_recvmmsg(struct trace_event_raw_sys_enter *ctx)
{ return enter(SC_RECVMMSG, ARG(ctx, 0), ARG(ctx, 1), ARG(ctx, 2), 0, 0); }

SEC("tracepoint/syscalls/sys_enter_read")
int enter_read(struct trace_event_raw_sys_enter *ctx)
{ return enter(SC_READ, ARG(ctx, 0), ARG(ctx, 1), ARG(ctx, 2), 0, 0); }

SEC("tracepoint/syscalls/sys_enter_write")
int enter_write(struct trace_event_raw_sys_enter *ctx)
{ return enter(SC_WRITE, ARG(ctx, 0), ARG(ctx, 1), ARG(ctx, 2), 0, 0); }

SEC("tracepoint/syscalls/sys_enter_readv")
int enter_readv(struct trace_event_raw_sys_enter *ctx)
{ return enter(SC_READV, ARG(ctx, 0), ARG(ctx, 1), ARG(ctx, 2), 0, 0); }

SEC("tracepoint/syscalls/sys_enter_writev")
int enter_writev(struct trace_event_raw_sys_enter *ctx)
{ return enter(SC_WRITEV, ARG(ctx, 0), ARG(ctx, 1), ARG(ctx, 2), 0, 0); }

/* A non-blocking connect() returns EINPROGRESS; the program learns how it ended (refused,
 * unreachable, timed out, or connected) from getsockopt(SO_ERROR) — curl, Go, Java NIO,
 * libuv, asyncio and nginx all ask that way. Other options are not traced. */
SEC("tracepoint/syscalls/sys_enter_getsockopt")
int enter_getsockopt(struct trace_event_raw_sys_enter *ctx)
{
	if (ARG(ctx, 1) != SOL_SOCKET || ARG(ctx, 2) != SO_ERROR)
		return 0;
	return enter(SC_GETSOCKOPT, ARG(ctx, 0), ARG(ctx, 3), 0, 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_close")
int enter_close(struct trace_event_raw_sys_enter *ctx)
{ return enter(SC_CLOSE, ARG(ctx, 0), 0, 0, 0, 0); }

/* ---- exit side ------------------------------------------------------------ */

static __always_inline struct inflight *take(__u64 *id)
{
	struct inflight *st;

	*id = bpf_get_current_pid_tgid();
	if ((*id >> 32) == agent_tgid)
		return 0;
	st = bpf_map_lookup_elem(&inflight, id);
	return st;
}

/* Plain buffer I/O and connect: tuple from the socket, payload from buf. */
static __always_inline int exit_simple(struct trace_event_raw_sys_exit *ctx, int is_iov)
{
	__u64 id;
	struct inflight *st = take(&id);
	struct event *e;
	long ret = ctx->ret;

	if (!st)
		return 0;
	e = new_event(st, ret);
	if (!e)
		goto out;
	read_tuple((struct socket *)st->sock, &e->t);
	if (st->sc == SC_CONNECT) {
		read_sockaddr(e, (const void *)st->addr, (__u32)st->addrlen);
	} else if (st->sc == SC_SENDTO) {
		read_sockaddr(e, (const void *)st->addr, (__u32)st->addrlen);
	} else if (st->sc == SC_RECVFROM && ret >= 0 && st->addr && st->addrlen) {
		__u32 alen = 0;
		bpf_probe_read_user(&alen, sizeof(alen), (const void *)st->addrlen);
		read_sockaddr(e, (const void *)st->addr, alen);
	}
	if (ret > 0 && st->sc != SC_CONNECT) {
		e->size = (__u32)ret;
		if (is_iov)
			copy_iov(e, (const struct iovec *)st->buf, st->count, snap_limit(ret));
		else
			copy_buf(e, (const void *)st->buf, snap_limit(ret));
	}
	submit(e);
out:
	bpf_map_delete_elem(&inflight, &id);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int exit_connect(struct trace_event_raw_sys_exit *ctx) { return exit_simple(ctx, 0); }
SEC("tracepoint/syscalls/sys_exit_sendto")
int exit_sendto(struct trace_event_raw_sys_exit *ctx) { return exit_simple(ctx, 0); }
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int exit_recvfrom(struct trace_event_raw_sys_exit *ctx) { return exit_simple(ctx, 0); }
SEC("tracepoint/syscalls/sys_exit_read")
int exit_read(struct trace_event_raw_sys_exit *ctx) { return exit_simple(ctx, 0); }
SEC("tracepoint/syscalls/sys_exit_write")
int exit_write(struct trace_event_raw_sys_exit *ctx) { return exit_simple(ctx, 0); }
SEC("tracepoint/syscalls/sys_exit_readv")
int exit_readv(struct trace_event_raw_sys_exit *ctx) { return exit_simple(ctx, 1); }
SEC("tracepoint/syscalls/sys_exit_writev")
int exit_writev(struct trace_event_raw_sys_exit *ctx) { return exit_simple(ctx, 1); }

/* getsockopt(SO_ERROR): reported like a connect's result, ret = -(the socket's pending error),
 * 0 once connected. A failed getsockopt itself says nothing about the connection: skipped. */
SEC("tracepoint/syscalls/sys_exit_getsockopt")
int exit_getsockopt(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id;
	struct inflight *st = take(&id);
	struct event *e;
	int so_error = 0;

	if (!st)
		return 0;
	if (ctx->ret == 0 && !bpf_probe_read_user(&so_error, sizeof(so_error), (const void *)st->buf)) {
		e = new_event(st, so_error > 0 ? -(long)so_error : 0);
		if (e) {
			read_tuple((struct socket *)st->sock, &e->t);
			submit(e);
		}
	}
	bpf_map_delete_elem(&inflight, &id);
	return 0;
}

/* accept/accept4: the new fd's tuple; the peer address the kernel wrote back. */
static __always_inline int exit_accept(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id;
	struct inflight *st = take(&id);
	struct event *e;
	long ret = ctx->ret;

	if (!st)
		return 0;
	e = new_event(st, ret);
	if (!e)
		goto out;
	if (ret >= 0) {
		struct socket *sock = fd_socket((int)ret);
		if (sock)
			read_tuple(sock, &e->t);
		if (st->addr && st->addrlen) {
			__u32 alen = 0;
			bpf_probe_read_user(&alen, sizeof(alen), (const void *)st->addrlen);
			read_sockaddr(e, (const void *)st->addr, alen);
		}
	}
	submit(e);
out:
	bpf_map_delete_elem(&inflight, &id);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int exit_accept_(struct trace_event_raw_sys_exit *ctx) { return exit_accept(ctx); }
SEC("tracepoint/syscalls/sys_exit_accept4")
int exit_accept4(struct trace_event_raw_sys_exit *ctx) { return exit_accept(ctx); }

SEC("tracepoint/syscalls/sys_exit_close")
int exit_close(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id;
	struct inflight *st = take(&id);
	struct event *e;

	if (!st)
		return 0;
	e = new_event(st, ctx->ret);
	if (e) {
		e->t = st->snap;
		submit(e);
	}
	bpf_map_delete_elem(&inflight, &id);
	return 0;
}

/* One message of sendmsg/recvmsg/sendmmsg/recvmmsg. */
static __always_inline void emit_msg(struct inflight *st, long ret, const struct user_msghdr *umsg,
				     __u64 moved, __u8 index)
{
	struct user_msghdr m;
	struct event *e = new_event(st, ret);

	if (!e)
		return;
	read_tuple((struct socket *)st->sock, &e->t);
	e->msg_index = index;
	if (!bpf_probe_read_user(&m, sizeof(m), umsg)) {
		if (m.msg_name && m.msg_namelen > 0)
			read_sockaddr(e, m.msg_name, (__u32)m.msg_namelen);
		if (moved > 0) {
			e->size = (__u32)moved;
			copy_iov(e, m.msg_iov, m.msg_iovlen, snap_limit(moved));
		}
	}
	submit(e);
}

static __always_inline int exit_msg(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id;
	struct inflight *st = take(&id);
	long ret = ctx->ret;

	if (!st)
		return 0;
	emit_msg(st, ret, (const struct user_msghdr *)st->buf, ret > 0 ? ret : 0, 0);
	bpf_map_delete_elem(&inflight, &id);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendmsg")
int exit_sendmsg(struct trace_event_raw_sys_exit *ctx) { return exit_msg(ctx); }
SEC("tracepoint/syscalls/sys_exit_recvmsg")
int exit_recvmsg(struct trace_event_raw_sys_exit *ctx) { return exit_msg(ctx); }

struct mmsg_ctx {
	struct inflight *st;
	long ret;
};

static long mmsg_one(__u64 i, void *data)
{
	struct mmsg_ctx *c = data;
	const struct mmsghdr *vec = (const struct mmsghdr *)c->st->buf;
	__u32 len = 0;

	bpf_probe_read_user(&len, sizeof(len), &vec[i].msg_len);
	emit_msg(c->st, c->ret, &vec[i].msg_hdr, len, (__u8)i);
	return 0;
}

/* sendmmsg/recvmmsg: one event per message transferred (ret = message count). */
static __always_inline int exit_mmsg(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id;
	struct inflight *st = take(&id);
	struct mmsg_ctx c;
	long ret = ctx->ret;

	if (!st)
		return 0;
	c.st = st;
	c.ret = ret;
	if (ret <= 0) {
		struct event *e = new_event(st, ret);
		if (e) {
			read_tuple((struct socket *)st->sock, &e->t);
			submit(e);
		}
	} else {
		bpf_loop(ret < MAX_MMSG ? ret : MAX_MMSG, mmsg_one, &c, 0);
	}
	bpf_map_delete_elem(&inflight, &id);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendmmsg")
int exit_sendmmsg(struct trace_event_raw_sys_exit *ctx) { return exit_mmsg(ctx); }
SEC("tracepoint/syscalls/sys_exit_recvmmsg")
int exit_recvmmsg(struct trace_event_raw_sys_exit *ctx) { return exit_mmsg(ctx); }
