/* callerid_sk.bpf.c - the sockstore backend: the owner lives on the socket.
 *
 * One record per outgoing connection, on the socket (BPF_MAP_TYPE_SK_STORAGE:
 * freed with it), by programs attached to the cgroup v2 root (so every process):
 *   cgroup connect4/connect6, in the caller's own context: owners[sk].owner = owner
 *   sock_ops ACTIVE_ESTABLISHED_CB (softirq; only the context's fields are used):
 *       owners[sk].key = tuple, so a connect that never succeeds leaves no closed copy
 * The tracer reads it back with one exact sock_diag request for the tuple
 * (INET_DIAG_REQ_SK_BPF_STORAGES), in its own network namespace: no tuple key,
 * no capacity, no namespace collision, nothing to sweep for open connections.
 *
 * The storage dies with the socket, so the owner's close() keeps a copy:
 *   cgroup sock_release (process context; its context cannot read the source
 *   address, hence the key kept on the socket): closed[key] = owner, closed_ns set
 * A plain hash, never LRU: nobody's entry is evicted. Each uid may add at most
 * CALLERID_CLOSED_SHARE entries per grace window (closed_share.h); past that its
 * own new closes go unrecorded (counted), so one user's churn cannot take the
 * grace period of anyone else's connections. The sweeper deletes entries after
 * the grace.
 *
 * Accepted connections cost a few sock_ops runs and one sock_release run, each of
 * which finds no storage (or the wrong op) and returns.
 * Kernel struct fields are never read: only the BPF context (struct bpf_sock*,
 * a stable uapi) and helpers.
 *
 * Compile-time flags (set by tracer/probes.py):
 *   CALLERID_MAX_CLOSED, CALLERID_MAX_UIDS, CALLERID_CLOSED_SHARE, CALLERID_GRACE_NS,
 *   CALLERID_PIN_OWNERS, CALLERID_PIN_CLOSED
 */
#include <uapi/linux/bpf.h>
#include "callerid.h"
#include "current_owner.h"

#define AF_INET_      2
#define AF_INET6_     10
#define IPPROTO_TCP_  6

/* BPF_SK_STORAGE with a pin path: BCC 0.26 has no pinned form of that macro. */
struct owners_table_t {
    int key;
    struct callerid_sk_record leaf;
    void *(*sk_storage_get)(void *, void *, int);
    int (*sk_storage_delete)(void *);
    u32 flags;
};
__attribute__((section("maps/sk_storage:" CALLERID_PIN_OWNERS)))
struct owners_table_t owners = { .flags = BPF_F_NO_PREALLOC };
BPF_ANNOTATE_KV_PAIR(owners, int, struct callerid_sk_record);

BPF_TABLE_PINNED("hash", struct callerid_key, struct callerid_owner, closed,
                 CALLERID_MAX_CLOSED, CALLERID_PIN_CLOSED);
/* LRU: a uid pushed out merely starts a fresh window; nobody can create uids. */
BPF_TABLE("lru_hash", u32, struct callerid_share, shares, CALLERID_MAX_UIDS);
static __always_inline struct callerid_share *shares_lookup(u32 *uid) { return shares.lookup(uid); }
static __always_inline void shares_update(u32 *uid, struct callerid_share *fresh) { shares.update(uid, fresh); }
#include "closed_share.h"
BPF_PERCPU_ARRAY(stats, u64, CALLERID_STAT_COUNT);

static __always_inline void count(int idx)
{
    u64 *v = stats.lookup(&idx);
    if (v)
        (*v)++;
}

static __always_inline int capture(struct bpf_sock_addr *ctx)
{
    if (ctx->protocol != IPPROTO_TCP_)
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct callerid_sk_record *r = owners.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!r) {
        count(CALLERID_STAT_UPDATE_FAILED);
        return 1;   /* 1 = let the connect proceed, always */
    }
    struct callerid_owner *o = &r->owner;
    fill_current_owner(o);
    o->closed_ns = 0;   /* the socket's record may be a reconnect's: nothing of it stays */
    o->flags = 0;
    r->key.sport = 0;   /* a reconnect of the same socket: the tuple comes anew */
    count(CALLERID_STAT_CONNECT);
    return 1;
}

int callerid_connect4(struct bpf_sock_addr *ctx) { return capture(ctx); }
int callerid_connect6(struct bpf_sock_addr *ctx) { return capture(ctx); }

/* The tuple, once the connection is established. Every other sock_ops callback
 * (and every socket without our record, such as an accepted one) returns at once. */
int callerid_sockops(struct bpf_sock_ops *ctx)
{
    if (ctx->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct callerid_sk_record *r = owners.sk_storage_get(sk, 0, 0);
    if (!r)
        return 1;
    struct callerid_key *key = &r->key;
    __builtin_memset(key, 0, sizeof(*key));
    if (ctx->family == AF_INET_) {
        key->saddr[10] = 0xff; key->saddr[11] = 0xff;
        key->daddr[10] = 0xff; key->daddr[11] = 0xff;
        u32 s4 = ctx->local_ip4, d4 = ctx->remote_ip4;
        __builtin_memcpy(&key->saddr[12], &s4, 4);
        __builtin_memcpy(&key->daddr[12], &d4, 4);
    } else if (ctx->family == AF_INET6_) {
        u32 a;
        a = ctx->local_ip6[0]; __builtin_memcpy(&key->saddr[0], &a, 4);
        a = ctx->local_ip6[1]; __builtin_memcpy(&key->saddr[4], &a, 4);
        a = ctx->local_ip6[2]; __builtin_memcpy(&key->saddr[8], &a, 4);
        a = ctx->local_ip6[3]; __builtin_memcpy(&key->saddr[12], &a, 4);
        a = ctx->remote_ip6[0]; __builtin_memcpy(&key->daddr[0], &a, 4);
        a = ctx->remote_ip6[1]; __builtin_memcpy(&key->daddr[4], &a, 4);
        a = ctx->remote_ip6[2]; __builtin_memcpy(&key->daddr[8], &a, 4);
        a = ctx->remote_ip6[3]; __builtin_memcpy(&key->daddr[12], &a, 4);
    } else {
        return 1;
    }
    key->dport = __builtin_bswap32(ctx->remote_port);   /* network order, in the high half */
    key->netns = bpf_get_netns_cookie(ctx);
    key->sport = ctx->local_port;                       /* host order; set last: "complete" */
    return 1;
}

/* The owner's close(): keep a copy for the grace period. */
int callerid_release(struct bpf_sock *ctx)
{
    if (ctx->protocol != IPPROTO_TCP_)
        return 1;
    struct callerid_sk_record *r = owners.sk_storage_get(ctx, 0, 0);
    if (!r)
        return 1;   /* not ours: accepted, or older than the probe */
    if (r->key.sport == 0) {
        count(CALLERID_STAT_CONNECT_FAILED);   /* never established: nothing to keep */
        return 1;
    }
    u64 now = bpf_ktime_get_boot_ns();
    if (!within_share(r->owner.uid, now)) {
        count(CALLERID_STAT_OVER_SHARE);
        return 1;
    }
    struct callerid_key key = r->key;
    struct callerid_owner copy = r->owner;
    copy.closed_ns = now;
    if (closed.update(&key, &copy) != 0)
        count(CALLERID_STAT_UPDATE_FAILED);   /* full: nobody's entry is evicted */
    else
        count(CALLERID_STAT_CLOSED);
    return 1;
}
