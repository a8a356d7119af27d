// SPDX-License-Identifier: Apache-2.0
//
// node-agent CPU sampler: a perf-event program run by the software cpu-clock
// event on every online CPU (agent/sampler.py attaches it at sample_freq Hz).
// Each sample is counted in the kernel under
//     (tgid, tid or 0, cgroup id, user stack id, kernel stack id)
// so user space reads one entry per distinct key, not one per sample.
//
// Double buffering: there are two sets of maps, set 0 (counts_0, stacks_0)
// and set 1 (counts_1, stacks_1). active_set[0] says which set this program
// writes. To drain, user space flips active_set, waits for programs already
// running to finish (an update of the `barrier` map-in-map makes the kernel
// call synchronize_rcu()), then reads and empties the set nobody writes.
// Nothing that arrives during a drain is lost or counted twice.
//
// Every size comes from the loader as a -D define, so nothing here is edited
// by string replacement:
//   COUNT_ENTRIES   distinct keys per set per interval
//   STACK_ENTRIES   distinct stacks per set per interval
//   STACK_DEPTH     frames kept per stack (<= kernel.perf_event_max_stack)
//   PER_THREAD      1: key on the thread id too; 0: tid is always 0

#include <uapi/linux/bpf_perf_event.h>

#if !defined(COUNT_ENTRIES) || !defined(STACK_ENTRIES) || !defined(STACK_DEPTH) || !defined(PER_THREAD)
#error "COUNT_ENTRIES, STACK_ENTRIES, STACK_DEPTH and PER_THREAD must be passed with -D"
#endif

// The map key. Explicit padding-free layout (8-byte aligned, 24 bytes):
// user space mirrors it through bcc's generated ctypes.
struct sample_key {
    u32 tgid;             // process id as user space knows it
    u32 tid;              // thread id when PER_THREAD, else 0
    u64 cgroup_id;        // bpf_get_current_cgroup_id(): cgroup v2 inode number
    s32 user_stack_id;    // >= 0: id in stacks_N; < 0: -errno from bpf_get_stackid
    s32 kernel_stack_id;  // same for the kernel stack (-EFAULT: sampled in user mode)
};

// One stack: STACK_DEPTH return addresses, leaf first, 0-terminated when shorter.
// The kernel derives the maximum depth from this value size.
struct stack {
    u64 ip[STACK_DEPTH];
};

// Why a sample, or part of one, was lost. Indexes of the `lost` array;
// agent/sampler.py keeps the same names in the same order.
enum lost_reason {
    LOST_USER_STACK_EFAULT = 0,   // no user stack: kernel thread, or unreadable user memory
    LOST_USER_STACK_ENOMEM,       // stack map full
    LOST_USER_STACK_EEXIST,       // hash collision with another stack (we never reuse ids)
    LOST_USER_STACK_OTHER,
    LOST_KERNEL_STACK_ENOMEM,
    LOST_KERNEL_STACK_EEXIST,
    LOST_KERNEL_STACK_OTHER,      // -EFAULT is not counted: it means the CPU was in user mode
    LOST_COUNTS_FULL,             // the counts map had no room: the whole sample is lost
    LOST_COUNTS_OTHER,
    LOST_REASONS,
};

// errno values (asm-generic/errno-base.h), without pulling in libc headers.
#ifndef E2BIG
#define E2BIG 7
#endif
#ifndef ENOMEM
#define ENOMEM 12
#endif
#ifndef EFAULT
#define EFAULT 14
#endif
#ifndef EEXIST
#define EEXIST 17
#endif

BPF_ARRAY(active_set, u32, 1);
BPF_HASH(counts_0, struct sample_key, u64, COUNT_ENTRIES);
BPF_HASH(counts_1, struct sample_key, u64, COUNT_ENTRIES);
BPF_TABLE("stacktrace", int, struct stack, stacks_0, STACK_ENTRIES);
BPF_TABLE("stacktrace", int, struct stack, stacks_1, STACK_ENTRIES);

// Cumulative counters, per CPU so no atomics are needed; user space sums them
// and reports the difference between drains.
BPF_PERCPU_ARRAY(lost, u64, LOST_REASONS);
BPF_PERCPU_ARRAY(idle, u64, 1);  // samples of the idle task (pid 0): total CPU = busy + idle

// Never read by the program. User space updates `barrier` after flipping
// active_set; for map-in-map updates the kernel waits (synchronize_rcu) until
// every program that may have read the old active_set has returned.
BPF_ARRAY(barrier_inner, u32, 1);
BPF_ARRAY_OF_MAPS(barrier, "barrier_inner", 1);

static __always_inline void count_lost(int reason)
{
    u64 *n = lost.lookup(&reason);
    if (n)
        *n += 1;  // per-CPU slot, and this program does not nest on a CPU
}

static __always_inline void count_stack_errors(struct sample_key *key)
{
    int u = key->user_stack_id, k = key->kernel_stack_id;

    if (u == -EFAULT)
        count_lost(LOST_USER_STACK_EFAULT);
    else if (u == -ENOMEM)
        count_lost(LOST_USER_STACK_ENOMEM);
    else if (u == -EEXIST)
        count_lost(LOST_USER_STACK_EEXIST);
    else if (u < 0)
        count_lost(LOST_USER_STACK_OTHER);

    if (k == -ENOMEM)
        count_lost(LOST_KERNEL_STACK_ENOMEM);
    else if (k == -EEXIST)
        count_lost(LOST_KERNEL_STACK_EEXIST);
    else if (k < 0 && k != -EFAULT)
        count_lost(LOST_KERNEL_STACK_OTHER);
}

// Add one to the key's count. Insert with BPF_NOEXIST so a full map is seen
// (and counted) instead of silently ignored; -EEXIST means another CPU added
// the key between our lookup and insert, so look it up again.
static __always_inline void add_0(struct sample_key *key)
{
    u64 one = 1, *n = counts_0.lookup(key);
    if (n) {
        __sync_fetch_and_add(n, 1);
        return;
    }
    int err = counts_0.insert(key, &one);
    if (err == -EEXIST) {
        n = counts_0.lookup(key);
        if (n) {
            __sync_fetch_and_add(n, 1);
            return;
        }
    }
    if (err)
        count_lost(err == -E2BIG || err == -ENOMEM ? LOST_COUNTS_FULL : LOST_COUNTS_OTHER);
}

static __always_inline void add_1(struct sample_key *key)
{
    u64 one = 1, *n = counts_1.lookup(key);
    if (n) {
        __sync_fetch_and_add(n, 1);
        return;
    }
    int err = counts_1.insert(key, &one);
    if (err == -EEXIST) {
        n = counts_1.lookup(key);
        if (n) {
            __sync_fetch_and_add(n, 1);
            return;
        }
    }
    if (err)
        count_lost(err == -E2BIG || err == -ENOMEM ? LOST_COUNTS_FULL : LOST_COUNTS_OTHER);
}

int on_cpu_sample(struct bpf_perf_event_data *ctx)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = (u32)pid_tgid;
    int zero = 0;

    if (tid == 0) {  // the idle task: count it, keep no stack
        u64 *n = idle.lookup(&zero);
        if (n)
            *n += 1;
        return 0;
    }

    struct sample_key key = {};
    key.tgid = pid_tgid >> 32;
    key.tid = PER_THREAD ? tid : 0;
    key.cgroup_id = bpf_get_current_cgroup_id();

    // The stack map must be known when the program is verified, so each set
    // has its own branch. User stacks are walked by frame pointers.
    // Never BPF_F_REUSE_STACKID: a reused id would silently change the stack
    // of samples already counted under it.
    u32 *set = active_set.lookup(&zero);
    if (set && *set == 1) {
        key.user_stack_id = stacks_1.get_stackid(ctx, BPF_F_USER_STACK);
        key.kernel_stack_id = stacks_1.get_stackid(ctx, 0);
        count_stack_errors(&key);
        add_1(&key);
    } else {
        key.user_stack_id = stacks_0.get_stackid(ctx, BPF_F_USER_STACK);
        key.kernel_stack_id = stacks_0.get_stackid(ctx, 0);
        count_stack_errors(&key);
        add_0(&key);
    }
    return 0;
}
