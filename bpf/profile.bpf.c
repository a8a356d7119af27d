// SPDX-License-Identifier: Apache-2.0
//
// node-agent CPU sampler: a perf-event program run by the software cpu-clock
// event on every online CPU (agent/sampling/sampler.py attaches it at
// sample_freq Hz). Each sample is counted twice, in two kinds of maps:
//
// 1. cats_N[(tgid, category, cgroup id)] += 1 -- EXACT. For every Go process
//    the agent registered (procs[tgid]: the PC ranges of the scheduler and GC
//    functions, of the `runtime` package and of the whole Go text, already
//    adjusted by the load bias) the program reads the user stack with
//    bpf_get_stack() into a per-CPU buffer -- no hash table, so no collision
//    can lose it -- and decides the category here:
//      scheduler      any frame in a scheduler range (stop walking at once)
//      gc             else any frame in a GC range
//      runtime_other  else the innermost frame inside the Go text is in `runtime`
//      user           else
//      unknown        no user stack, or no frame inside the Go text
//      unregistered   the process has no procs entry (not Go, or not yet seen)
//    This map has one entry per (process, cgroup, category): a few per process.
//
// 2. counts_N[(tgid, tid, cgroup, stack hash)] += 1 and stacks_N[hash] = the
//    stack -- BEST EFFORT, for profiles only, and only for registered
//    processes. stacks_N is an ordinary hash map keyed by a 64-bit hash of the
//    frames (not a stacktrace map, whose bucket collisions drop stacks): it
//    loses a stack only when full, and that is counted.
//
// Double buffering: set 0 (cats_0, counts_0, stacks_0) and set 1. active_set[0]
// says which set this program writes. To drain, user space flips active_set,
// waits for programs already running to finish (an update of the `barrier`
// map-in-map makes the kernel call synchronize_rcu()), then reads and empties
// the set nobody writes. Nothing is lost or counted twice across a drain.
// The `lost` and `idle` counters are split by set the same way, so that a
// window's losses are those of the samples it holds.
//
// The user stack is what the kernel's perf callchain code walks (frame
// pointers, from the user registers even when the CPU was in the kernel):
// the same frames `perf record -g` records. Arch-neutral: nothing here reads
// registers itself.
//
// Every size comes from the loader as a -D define:
//   COUNT_ENTRIES   distinct profile keys per set per interval
//   STACK_ENTRIES   distinct stacks per set per interval
//   CAT_ENTRIES     (process, cgroup, category) triples per set per interval
//   PROC_ENTRIES    registered Go processes
//   STACK_DEPTH     frames kept per stack (<= kernel.perf_event_max_stack)
//   PER_THREAD      1: key profiles on the thread id too; 0: tid is always 0
//   MAX_HOT, MAX_RT ranges per process (agent/analysis/goruntime.py: RangeLimits)

#include <uapi/linux/bpf_perf_event.h>

#if !defined(COUNT_ENTRIES) || !defined(STACK_ENTRIES) || !defined(STACK_DEPTH) || !defined(PER_THREAD) \
    || !defined(CAT_ENTRIES) || !defined(PROC_ENTRIES) || !defined(MAX_HOT) || !defined(MAX_RT)
#error "COUNT_ENTRIES, STACK_ENTRIES, CAT_ENTRIES, PROC_ENTRIES, STACK_DEPTH, PER_THREAD, MAX_HOT and MAX_RT must be passed with -D"
#endif

// Categories: agent/sampling/sampler.py keeps the same names in the same order.
enum category {
    CAT_SCHEDULER = 0,
    CAT_GC,
    CAT_RUNTIME_OTHER,
    CAT_USER,
    CAT_UNKNOWN,
    CAT_UNREGISTERED,
};

// What the agent registers per Go process. All addresses are runtime
// addresses, ranges half-open [lo, hi). rt_lo is sorted ascending and padded
// with RANGE_PAD up to MAX_RT (a power of two) so a fixed-step binary search works.
struct go_proc {
    u64 text_lo;
    u64 text_hi;
    u64 hot_lo[MAX_HOT];    // unused slots: lo = hi = RANGE_PAD
    u64 hot_hi[MAX_HOT];
    u32 hot_cat[MAX_HOT];   // CAT_SCHEDULER or CAT_GC
    u64 rt_lo[MAX_RT];
    u64 rt_hi[MAX_RT];
};

struct cat_key {
    u32 tgid;
    u32 category;
    u64 cgroup_id;        // bpf_get_current_cgroup_id(): cgroup v2 inode number
};

// The profile key. Explicit padding-free layout (8-byte aligned, 32 bytes).
struct sample_key {
    u32 tgid;             // process id as user space knows it
    u32 tid;              // thread id when PER_THREAD, else 0
    u64 cgroup_id;
    u64 stack_hash;       // key in stacks_N; 0 when there is no stack
    s32 user_stack_err;   // 0, or -errno: why there is no stack
    u32 pad;
};

// One stack: STACK_DEPTH return addresses, leaf first, 0-terminated when shorter.
struct stack {
    u64 ip[STACK_DEPTH];
};

// Why a sample, or part of one, was lost. Indexes of the `lost` array.
enum lost_reason {
    LOST_USER_STACK_EFAULT = 0,   // a registered process's user stack could not be read at all
    LOST_USER_STACK_EMPTY,        // read, but no frame lies in the Go text (category unknown)
    LOST_STACKS_FULL,             // stacks_N full: the profile misses this sample's stack
    LOST_USER_STACK_OTHER,
    LOST_COUNTS_FULL,             // counts_N full: the profile misses this sample
    LOST_COUNTS_OTHER,
    LOST_CATEGORIES_FULL,         // cats_N full: the category count misses this sample
    LOST_REASONS,
};

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
BPF_HASH(procs, u32, struct go_proc, PROC_ENTRIES);
BPF_HASH(cats_0, struct cat_key, u64, CAT_ENTRIES);
BPF_HASH(cats_1, struct cat_key, u64, CAT_ENTRIES);
BPF_HASH(counts_0, struct sample_key, u64, COUNT_ENTRIES);
BPF_HASH(counts_1, struct sample_key, u64, COUNT_ENTRIES);
// Not preallocated: the kernel memory follows the stacks actually seen, not the cap.
BPF_F_TABLE("hash", u64, struct stack, stacks_0, STACK_ENTRIES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", u64, struct stack, stacks_1, STACK_ENTRIES, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(stack_buf, struct stack, 1);

// Cumulative counters, per CPU so no atomics are needed; user space sums them
// and reports the difference between drains.
BPF_PERCPU_ARRAY(lost, u64, 2 * LOST_REASONS);  // [set * LOST_REASONS + reason], cumulative
BPF_PERCPU_ARRAY(idle, u64, 2);  // [set]: samples of the idle task (pid 0): total CPU = busy + idle

// Never read by the program. User space updates `barrier` after flipping
// active_set; for map-in-map updates the kernel waits (synchronize_rcu) until
// every program that may have read the old active_set has returned.
BPF_ARRAY(barrier_inner, u32, 1);
BPF_ARRAY_OF_MAPS(barrier, "barrier_inner", 1);

static __always_inline void count_lost(int one_set, int reason)
{
    int slot = one_set * LOST_REASONS + reason;
    u64 *n = lost.lookup(&slot);
    if (n)
        *n += 1;  // per-CPU slot, and this program does not nest on a CPU
}

// The classification below has no branches inside a frame: every test is
// arithmetic on 0/1 values (below(a, b) is 1 when a < b). A branch per test
// would multiply the states the verifier explores per frame, 127 frames deep,
// past its limit; arithmetic keeps it one state per frame. Addresses are user
// addresses (< 2^63), and unused range slots hold RANGE_PAD (> any of them),
// so a - b never wraps into the sign bit wrongly.
#define RANGE_PAD (1ULL << 62)

static __always_inline u64 below(u64 a, u64 b)
{
    return (a - b) >> 63;
}

// 1 if pc is in the runtime package. Fixed-step binary search over the
// sorted, padded rt_lo: the last i with rt_lo[i] <= pc, then pc < rt_hi[i].
static __always_inline u64 in_runtime(struct go_proc *p, u64 pc)
{
    u32 i = 0;
#pragma unroll
    for (u32 step = MAX_RT / 2; step > 0; step >>= 1) {
        u32 j = (i + step) & (MAX_RT - 1);
        i = (i + step * (u32)(below(pc, p->rt_lo[j]) ^ 1)) & (MAX_RT - 1);
    }
    return (below(pc, p->rt_lo[i]) ^ 1) & below(pc, p->rt_hi[i]);
}

// Walk the stack once: decide the category and hash the frames.
static __always_inline u32 classify(struct go_proc *p, struct stack *st, u32 n, u64 *hash)
{
    u64 h = 0xcbf29ce484222325ULL;  // FNV offset basis; mixed below with a multiply-xorshift
    u64 leaf_seen = 0, leaf_rt = 0, gc = 0, sched = 0;

    for (u32 i = 0; i < STACK_DEPTH; i++) {
        if (i >= n)
            break;
        // clang may fold the two loop bounds into one the verifier cannot follow:
        // an opaque copy of i, checked again, keeps the read provably in bounds.
        u32 at = i;
        asm volatile("" : "+r"(at));
        if (at >= STACK_DEPTH)
            break;
        u64 ip = st->ip[at];
        h = (h ^ ip) * 0x100000001b3ULL;
        h ^= h >> 29;
        // A return address may be one past its function's end: look up the call instead.
        u64 pc = ip - (i ? 1 : 0);
        // Outside the Go text: vdso, cgo, or garbage from a broken frame chain.
        u64 go = (below(pc, p->text_lo) ^ 1) & below(pc, p->text_hi);
        u64 first = go & (leaf_seen ^ 1);  // the innermost Go frame
        leaf_rt |= first & in_runtime(p, pc);
        leaf_seen |= go;
#pragma unroll
        for (u32 k = 0; k < MAX_HOT; k++) {
            u64 in = (below(pc, p->hot_lo[k]) ^ 1) & below(pc, p->hot_hi[k]);
            sched |= in & (p->hot_cat[k] == CAT_SCHEDULER);
            gc |= in & (p->hot_cat[k] == CAT_GC);
        }
    }
    *hash = h ? h : 1;  // 0 means "no stack"
    if (sched)
        return CAT_SCHEDULER;
    if (gc)
        return CAT_GC;
    if (!leaf_seen)
        return CAT_UNKNOWN;
    return leaf_rt ? CAT_RUNTIME_OTHER : CAT_USER;
}

// Add one to a u64 counter under key. Insert with BPF_NOEXIST so a full map is
// seen (and counted) instead of silently ignored; -EEXIST means another CPU
// added the key between our lookup and insert, so look it up again. bcc allows
// map calls neither through pointers nor in macros, hence one copy per map.
static __always_inline void add_cat_0(struct cat_key *key)
{
    u64 one = 1, *n = cats_0.lookup(key);
    if (!n && cats_0.insert(key, &one) == 0)
        return;
    if (!n)
        n = cats_0.lookup(key);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        count_lost(0, LOST_CATEGORIES_FULL);
}

static __always_inline void add_cat_1(struct cat_key *key)
{
    u64 one = 1, *n = cats_1.lookup(key);
    if (!n && cats_1.insert(key, &one) == 0)
        return;
    if (!n)
        n = cats_1.lookup(key);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        count_lost(1, LOST_CATEGORIES_FULL);
}

static __always_inline void add_count_0(struct sample_key *key)
{
    u64 one = 1, *n = counts_0.lookup(key);
    int err = 0;
    if (!n && (err = counts_0.insert(key, &one)) == 0)
        return;
    if (!n)
        n = counts_0.lookup(key);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        count_lost(0, err == -E2BIG || err == -ENOMEM ? LOST_COUNTS_FULL : LOST_COUNTS_OTHER);
}

static __always_inline void add_count_1(struct sample_key *key)
{
    u64 one = 1, *n = counts_1.lookup(key);
    int err = 0;
    if (!n && (err = counts_1.insert(key, &one)) == 0)
        return;
    if (!n)
        n = counts_1.lookup(key);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        count_lost(1, err == -E2BIG || err == -ENOMEM ? LOST_COUNTS_FULL : LOST_COUNTS_OTHER);
}

// Store a stack under its hash; 0 if stored (or already there), else -errno.
static __always_inline int put_stack_0(u64 *hash, struct stack *st)
{
    int err = stacks_0.insert(hash, st);
    return err == -EEXIST ? 0 : err;
}

static __always_inline int put_stack_1(u64 *hash, struct stack *st)
{
    int err = stacks_1.insert(hash, st);
    return err == -EEXIST ? 0 : err;
}

int on_cpu_sample(struct bpf_perf_event_data *ctx)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = (u32)pid_tgid;
    int zero = 0;
    u32 *set = active_set.lookup(&zero);
    int one_set = set && *set == 1;

    if (tid == 0) {  // the idle task: count it, keep no stack
        u64 *n = idle.lookup(&one_set);
        if (n)
            *n += 1;
        return 0;
    }

    u32 tgid = pid_tgid >> 32;
    struct cat_key ck = {};
    ck.tgid = tgid;
    ck.cgroup_id = bpf_get_current_cgroup_id();

    struct go_proc *p = procs.lookup(&tgid);
    if (!p) {  // not Go, or not registered yet: counted, no stack walked
        ck.category = CAT_UNREGISTERED;
        if (one_set)
            add_cat_1(&ck);
        else
            add_cat_0(&ck);
        return 0;
    }

    struct stack *st = stack_buf.lookup(&zero);
    if (!st)
        return 0;
    // Fills st and zeroes what is past the last frame.
    long got = bpf_get_stack(ctx, st, sizeof(*st), BPF_F_USER_STACK);

    struct sample_key key = {};
    key.tgid = tgid;
    key.tid = PER_THREAD ? tid : 0;
    key.cgroup_id = ck.cgroup_id;
    if (got <= 0) {
        ck.category = CAT_UNKNOWN;
        key.user_stack_err = got < 0 ? (s32)got : -EFAULT;
        count_lost(one_set, got == -EFAULT || got == 0 ? LOST_USER_STACK_EFAULT : LOST_USER_STACK_OTHER);
    } else {
        u32 n = (u32)got / sizeof(u64);
        u64 hash = 0;
        ck.category = classify(p, st, n, &hash);
        if (ck.category == CAT_UNKNOWN)
            count_lost(one_set, LOST_USER_STACK_EMPTY);
        int err = one_set ? put_stack_1(&hash, st) : put_stack_0(&hash, st);
        if (err == 0) {
            key.stack_hash = hash;
        } else {
            key.user_stack_err = err;
            count_lost(one_set, err == -E2BIG || err == -ENOMEM ? LOST_STACKS_FULL : LOST_USER_STACK_OTHER);
        }
    }
    if (one_set) {
        add_cat_1(&ck);
        add_count_1(&key);
    } else {
        add_cat_0(&ck);
        add_count_0(&key);
    }
    return 0;
}
