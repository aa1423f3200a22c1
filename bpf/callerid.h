/* callerid.h - the one contract between the BPF program and user space.
 *
 * Every struct that crosses the kernel boundary lives here, with explicit,
 * zeroed padding so that hashing a key never depends on stack garbage.
 * tracer/layout.py mirrors these structs for ctypes; tests/kernel checks the
 * two against BCC's own view of this file. Change a struct or the set of
 * pinned maps => bump CALLERID_LAYOUT_VERSION: it is part of the bpffs pin
 * path, so an old pinned map is never read with a new layout, and an old
 * tracer's maps are never mixed with a new tracer's.
 */
#ifndef CALLERID_H
#define CALLERID_H

#define CALLERID_LAYOUT_VERSION 4

/* A TCP connection as seen by the side that called connect():
 * local (source) address/port -> remote (destination) address/port.
 * IPv4 addresses are stored v4-mapped (::ffff:a.b.c.d), which is what the
 * sock tracepoints already put in their *_v6 fields, so AF_INET and
 * dual-stack AF_INET6 connections share one key format. Ports host order. */
struct callerid_key {
    __u8  saddr[16];
    __u8  daddr[16];
    __u16 sport;
    __u16 dport;
    __u32 _pad;
    __u64 netns;      /* netns cookie of the socket; 0 where the probe cannot know it
                         (the tuple-keyed backends: tracepoint args carry no netns) */
};

/* Owner of a connection, captured in process context at connect time. */
struct callerid_owner {
    __u32 tgid;
    __u32 tid;
    __u32 uid;
    __u32 gid;
    __u64 cgroup_id;   /* cgroup v2 id (unified hierarchy); 0 if unknown */
    __u64 birth_ns;    /* CLOCK_BOOTTIME at connect(), comparable to /proc starttime */
    __u64 closed_ns;   /* CLOCK_BOOTTIME when the socket closed; 0 while open */
    __u32 flags;       /* CALLERID_F_* */
    __u32 _pad;
    char  comm[16];
};

/* flags */
#define CALLERID_F_RECONCILED 1  /* written by user space at start-up, not by a probe */

/* Indices of the per-CPU stats array. */
#define CALLERID_STAT_CONNECT        0 /* owner captured at connect */
#define CALLERID_STAT_ESTABLISHED    1 /* tuple entry written */
#define CALLERID_STAT_PENDING_MISS   2 /* ESTABLISHED with no captured owner */
#define CALLERID_STAT_CONNECT_FAILED 3 /* SYN_SENT -> CLOSE: pending dropped */
#define CALLERID_STAT_CLOSED         4 /* tuple entry moved to the closed map */
#define CALLERID_STAT_UPDATE_FAILED  5 /* bpf_map_update_elem returned an error */
#define CALLERID_STAT_OVER_SHARE     6 /* closed entry not kept: its uid used its share */
#define CALLERID_STAT_SPILLED        7 /* cookie: slot busy, the record went to the spill hash */
#define CALLERID_STAT_COUNT          8

/* sockstore backend: the record on the socket. The key is filled once the kernel
 * has chosen the source port (sock_ops TCP_CONNECT_CB), for the closed copy. */
struct callerid_sk_record {
    struct callerid_owner owner;
    struct callerid_key key;    /* sport 0 until the tuple is known */
};

/* sockstore backend: one uid's closed-entry budget for the current grace window. */
struct callerid_share {
    __u64 window_ns;   /* CLOCK_BOOTTIME when the window started */
    __u64 used;        /* closed entries recorded in this window */
};

/* cookie backend: one slot of the direct-mapped table, indexed by socket cookie modulo
 * the slot count. Cookies are handed out in sequence, so the slots of recent sockets
 * share warm cache lines: an accepted socket's miss costs one array read. */
struct callerid_ck_slot {
    __u64 cookie;   /* whose record this is; 0: free */
    __u32 spill;    /* open records of cookies that map here but went to the spill hash */
    __u32 _pad;
    struct callerid_owner owner;
};

#endif
