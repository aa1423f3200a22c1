/* current_owner.h - a connection's owner, taken from the task that calls connect().
 *
 * Process context only: in softirq (an ESTABLISHED transition, sock_ops) `current`
 * is whatever task the interrupt landed on, not the owner.
 */
#ifndef CALLERID_CURRENT_OWNER_H
#define CALLERID_CURRENT_OWNER_H

#include "callerid.h"

/* The current task's pid, tid, uid, gid, cgroup, comm and the time (birth_ns).
 * closed_ns, flags and padding are the caller's: it zeroes them. */
static __always_inline void fill_current_owner(struct callerid_owner *o)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 uid_gid = bpf_get_current_uid_gid();
    o->tgid = pid_tgid >> 32;
    o->tid = (u32)pid_tgid;
    o->uid = (u32)uid_gid;
    o->gid = uid_gid >> 32;
    o->cgroup_id = bpf_get_current_cgroup_id();
    o->birth_ns = bpf_ktime_get_boot_ns();
    bpf_get_current_comm(&o->comm, sizeof(o->comm));
}

#endif
