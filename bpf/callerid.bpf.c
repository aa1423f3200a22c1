/* callerid.bpf.c - record which process opened each outgoing TCP connection.
 *
 * Two steps, because no single hook both runs in the owner's context and
 * sees the full 4-tuple without reading struct sock fields (whose offsets
 * BCC would take from headers that may not match the running kernel):
 *   1. at connect(), in process context: pending[sk] = owner
 *      (tracepoint CLOSE->SYN_SENT, or kprobe/fentry on tcp_connect)
 *   2. at SYN_SENT->ESTABLISHED (softirq, `current` is NOT the owner):
 *      conns[tuple] = pending[sk], tuple taken from the tracepoint args.
 * Closing moves the entry to closed[tuple] with closed_ns stamped; user space
 * sweeps closed entries after a grace. A map of its own, because LRU eviction
 * is per map: churn of short connections then only ever evicts closed entries,
 * never long-lived open ones.
 *
 * Compile-time flags (set by tracer/probes.py):
 *   CALLERID_PROBE_TRACEPOINT | CALLERID_PROBE_KPROBE | CALLERID_PROBE_FENTRY
 *   CALLERID_MAX_CONNS, CALLERID_MAX_CLOSED, CALLERID_MAX_PENDING,
 *   CALLERID_PIN_CONNS, CALLERID_PIN_CLOSED, CALLERID_PIN_PENDING
 */
#include <uapi/linux/ptrace.h>
#include <linux/socket.h>
#include <net/sock.h>
#include "callerid.h"
#include "current_owner.h"

#define TCP_ESTABLISHED_ 1
#define TCP_SYN_SENT_    2
#define TCP_SYN_RECV_    3
#define TCP_FIN_WAIT1_   4
#define TCP_CLOSE_       7
#define TCP_CLOSE_WAIT_  8
#define TCP_LAST_ACK_    9
#define AF_INET_         2
#define AF_INET6_        10
#define IPPROTO_TCP_     6

BPF_TABLE_PINNED("lru_hash", struct callerid_key, struct callerid_owner, conns,
                 CALLERID_MAX_CONNS, CALLERID_PIN_CONNS);
BPF_TABLE_PINNED("lru_hash", struct callerid_key, struct callerid_owner, closed,
                 CALLERID_MAX_CLOSED, CALLERID_PIN_CLOSED);
BPF_TABLE_PINNED("lru_hash", u64, struct callerid_owner, pending,
                 CALLERID_MAX_PENDING, CALLERID_PIN_PENDING);
BPF_PERCPU_ARRAY(stats, u64, CALLERID_STAT_COUNT);

static __always_inline void count(int idx)
{
    u64 *v = stats.lookup(&idx);
    if (v)
        (*v)++;
}

/* Step 1: capture the owner of socket `sk` in the caller's context. */
static __always_inline void capture_owner(u64 sk)
{
    struct callerid_owner owner;
    __builtin_memset(&owner, 0, sizeof(owner));
    fill_current_owner(&owner);
    if (pending.update(&sk, &owner) != 0)
        count(CALLERID_STAT_UPDATE_FAILED);
    else
        count(CALLERID_STAT_CONNECT);
}

/* The tracepoint record is the program's context: plain loads, no helper call. */
#define FILL_KEY(key, args)                                              \
    do {                                                                 \
        __builtin_memset(&(key), 0, sizeof(key));                        \
        __builtin_memcpy(&(key).saddr, (args)->saddr_v6, 16);            \
        __builtin_memcpy(&(key).daddr, (args)->daddr_v6, 16);            \
        (key).sport = (args)->sport;                                     \
        (key).dport = (args)->dport;                                     \
    } while (0)

/* Move an open entry to the closed map. Later close transitions of the same
 * socket find nothing in conns and leave the closed entry untouched. */
static __always_inline void move_closed(struct callerid_key *key)
{
    struct callerid_owner *owner = conns.lookup(key);
    if (!owner || owner->closed_ns != 0)
        return;
    struct callerid_owner copy = *owner;
    copy.closed_ns = bpf_ktime_get_boot_ns();
    if (closed.update(key, &copy) != 0) {
        /* Keep it stamped in place: the sweeper deletes it after the grace. */
        owner->closed_ns = copy.closed_ns;
        count(CALLERID_STAT_UPDATE_FAILED);
        return;
    }
    conns.delete(key);
    count(CALLERID_STAT_CLOSED);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP_)
        return 0;
    if (args->family != AF_INET_ && args->family != AF_INET6_)
        return 0;
    u64 sk = (u64)args->skaddr;

#ifdef CALLERID_PROBE_TRACEPOINT
    if (args->oldstate == TCP_CLOSE_ && args->newstate == TCP_SYN_SENT_) {
        capture_owner(sk);
        return 0;
    }
#endif
    if (args->oldstate == TCP_SYN_SENT_ && args->newstate == TCP_ESTABLISHED_) {
        struct callerid_owner *owner = pending.lookup(&sk);
        if (!owner) {
            count(CALLERID_STAT_PENDING_MISS);
            return 0;
        }
        struct callerid_key key;
        FILL_KEY(key, args);
        struct callerid_owner copy = *owner;
        copy.closed_ns = 0;
        if (conns.update(&key, &copy) != 0)
            count(CALLERID_STAT_UPDATE_FAILED);
        else
            count(CALLERID_STAT_ESTABLISHED);
        pending.delete(&sk);
        return 0;
    }
    /* The owner closing its end (FIN_WAIT1 / LAST_ACK) starts the grace
     * period: the socket may linger in FIN_WAIT2 or TIME_WAIT for minutes, but
     * the owner is done with it. A reset goes straight to CLOSE. */
    if (args->newstate == TCP_FIN_WAIT1_ || args->newstate == TCP_LAST_ACK_) {
        struct callerid_key key;
        FILL_KEY(key, args);
        move_closed(&key);
        return 0;
    }
    if (args->newstate == TCP_CLOSE_) {
        if (args->oldstate == TCP_SYN_SENT_) {
            /* failed connect: nothing may stay behind */
            if (pending.delete(&sk) == 0)
                count(CALLERID_STAT_CONNECT_FAILED);
            return 0;
        }
        /* From FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK or TIME_WAIT the close
         * above already moved the entry: only a reset of a connection that was
         * still open has one left. Skipping the others saves a lookup per socket. */
        if (args->oldstate != TCP_ESTABLISHED_ && args->oldstate != TCP_CLOSE_WAIT_ &&
            args->oldstate != TCP_SYN_RECV_)
            return 0;
        struct callerid_key key;
        FILL_KEY(key, args);
        move_closed(&key);
    }
    return 0;
}
/* No tcp_destroy_sock program: a TCP socket is destroyed only in CLOSE, and every
 * way into CLOSE passes tcp_set_state and so the tracepoint above. It ran twice per
 * connection (both ends) for nothing but misses. */

#ifdef CALLERID_PROBE_KPROBE
/* kprobe: only the sk pointer (first argument) is used, never its fields. */
int kprobe__tcp_connect(struct pt_regs *ctx, struct sock *sk)
{
    capture_owner((u64)sk);
    return 0;
}
#endif

#ifdef CALLERID_PROBE_FENTRY
KFUNC_PROBE(tcp_connect, struct sock *sk)
{
    capture_owner((u64)sk);
    return 0;
}
#endif
