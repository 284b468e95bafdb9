/* tvmdeploy's thread pool for the parallel loops of an artifact's CPU kernels.
 *
 * Compiled into every shared library tvmdeploy builds for a CPU target; TVM's own pool
 * stays in use unless the loader points the library's __TVMBackendParallelLaunch at
 * tvmdeploy_parallel_launch (runtime/parallel_pool.py).
 *
 * Why: between kernels TVM's workers either sleep (woken per kernel: 20-60 us per launch
 * on the 2-vCPU VMs measured, the whole gap to ONNX Runtime on models of many small
 * kernels) or spin with sched_yield, which on a machine with another busy process hands
 * the core away for whole time slices (40x slower). Here workers spin with a pause
 * instruction while an inference runs (tvmdeploy_pool_begin .. _end) and sleep on a
 * futex between inferences. A worker preempted while spinning (another process wants
 * the core) turns spinning off for the next inferences, doubling that count each time
 * it happens again; the caller's thread also claims tasks a late worker has not taken,
 * so a descheduled worker never stalls a kernel that has not started on it.
 *
 * Each thread runs its own contiguous share of a loop first, the caller the first share
 * and worker i the (i+1)-th, as TVM's pool does: consecutive kernels that split their
 * loops alike then find their data in the cache of the core that wrote it (claiming from
 * one shared counter handed the halves to whichever thread came first). Linux only
 * (futex, RUSAGE_THREAD). */
#define _GNU_SOURCE
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Bind the pthread functions glibc 2.34 moved into libc to their older versions, so the
 * library loads on the glibc TVM's runtime wheels need (>= 2.28), not only on the build
 * machine's. (Their older versions live in libpthread there, which every threaded process
 * that loads TVM's runtime has mapped.) */
#if defined(__GLIBC__) && defined(__x86_64__)
#define OLD_GLIBC "GLIBC_2.2.5"
#define OLD_GLIBC_AFFINITY "GLIBC_2.3.4"
#elif defined(__GLIBC__) && defined(__aarch64__)
#define OLD_GLIBC "GLIBC_2.17"
#define OLD_GLIBC_AFFINITY "GLIBC_2.17"
#endif
#ifdef OLD_GLIBC
__asm__(".symver pthread_create, pthread_create@" OLD_GLIBC);
__asm__(".symver pthread_join, pthread_join@" OLD_GLIBC);
__asm__(".symver pthread_mutex_trylock, pthread_mutex_trylock@" OLD_GLIBC);
__asm__(".symver pthread_setaffinity_np, pthread_setaffinity_np@" OLD_GLIBC_AFFINITY);
#endif

typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

#define MAX_THREADS 256
#define MAX_BACKOFF 256        /* inferences without spinning after repeated preemption */
#define CALLER_WAIT_NS 50000   /* the caller spins this long for running tasks, then sleeps */
/* Tasks per thread of a parallel loop that leaves the split to the pool: two, so a core
 * that finishes first takes half of a slower one's share (ResNet-50 and SqueezeNet,
 * 2-vCPU Xeon VM: 1 and 2 read alike, 4 slightly worse on one, 8 worse on both). */
#define TASKS_PER_THREAD 2

static int pool_threads = 1;
static int started;
static pthread_t workers[MAX_THREADS];
static pthread_mutex_t launch_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint32_t generation; /* of the current job */
static _Atomic uint64_t range_next[MAX_THREADS]; /* (generation << 32) | next task of each range */
static _Atomic int range_end[MAX_THREADS]; /* atomics: a late thread may read them while the next job sets them */
static _Atomic int job_ranges = 1;
static _Atomic uint32_t wake_word; /* futex word the sleeping workers wait on */
static _Atomic uint32_t done;      /* tasks of the current job finished (futex word) */
static _Atomic int sleepers;
static _Atomic int caller_sleeping;  /* the caller waits on `done` in the kernel */
static _Atomic int spinning;       /* workers spin between jobs (an inference is running) */
static _Atomic int preempted;      /* a spinning worker was preempted in this inference */
static _Atomic int shutting_down;
static _Atomic int failed;
static _Atomic uint64_t launches, parallel_launches;
static int backoff, backoff_left;  /* under launch_lock */
static FTVMParallelLambda job_fn;
static void* job_data;
static TVMParallelGroupEnv job_env;
static __thread int in_pool;

static long futex(_Atomic uint32_t* word, int op, uint32_t value) {
  return syscall(SYS_futex, (uint32_t*)word, op, value, NULL, NULL, 0);
}

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static long involuntary_switches(void) {
  struct rusage usage;
  return getrusage(RUSAGE_THREAD, &usage) == 0 ? usage.ru_nivcsw : 0;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Each thread of the job owns a contiguous range of its tasks (the caller the first,
 * worker i the (i+1)-th), so consecutive kernels that split their loops alike find their
 * data in the cache of the core that wrote it; a thread done with its range takes tasks
 * left in the others' (a slower or descheduled core's work is shared, never waited for).
 * A range's word is (job generation << 32) | next unclaimed task, so a thread late for
 * a job can never run a task of the next one. */
static int claim_from(int range, uint32_t gen) {
  for (;;) {
    uint64_t word = atomic_load(&range_next[range]);
    if ((uint32_t)(word >> 32) != gen || (int)(uint32_t)word >= range_end[range]) return -1;
    if (atomic_compare_exchange_weak(&range_next[range], &word, word + 1)) return (int)(uint32_t)word;
  }
}

/* Claim and run tasks of job `gen`, own range first, until none is left unclaimed. */
static void run_tasks(uint32_t gen, int self) {
  for (int k = 0; k < job_ranges; ++k) {
    int range = (self + k) % job_ranges;
    int task;
    while ((task = claim_from(range, gen)) >= 0) {
      /* Claimed: the job cannot finish (nor its fields change) before this task does. */
      if (job_fn(task, &job_env, job_data) != 0) atomic_store(&failed, 1);
      if ((int)atomic_fetch_add(&done, 1) + 1 == job_env.num_task && atomic_load(&caller_sleeping))
        futex(&done, FUTEX_WAKE_PRIVATE, 1);
    }
  }
}

/* Wait for a job newer than `seen`: spin while an inference runs, else sleep. A worker
 * notes, when an inference's spinning starts and when it ends, its involuntary context
 * switches and how much of the wall-clock time between it was on the CPU: switched out
 * for more than LOST_SHARE of it (spinning or running tasks), another thread wanted this
 * CPU. (A kernel thread that runs for a moment, such as kdamond every few ms, switches
 * the worker out in nearly every long inference but takes 1-2 % of it: no competitor.
 * Backing off for it, on any involuntary switch, put 45 % of ResNet-50's inferences on a
 * quiet 2-vCPU VM on sleeping workers, a wake-up per kernel: 0.90x the latency without.) */
#define LOST_SHARE 0.10
static __thread long switches_at_spin_start = -1;
static __thread int64_t wall_at_spin_start, cpu_at_spin_start;

static int64_t thread_cpu_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void spin_started(void) {
  switches_at_spin_start = involuntary_switches();
  wall_at_spin_start = now_ns();
  cpu_at_spin_start = thread_cpu_ns();
}

static void spin_ended(void) {
  if (switches_at_spin_start < 0) return;
  int64_t wall = now_ns() - wall_at_spin_start, cpu = thread_cpu_ns() - cpu_at_spin_start;
  if (involuntary_switches() != switches_at_spin_start && (double)(wall - cpu) > LOST_SHARE * (double)wall)
    atomic_store(&preempted, 1);
  switches_at_spin_start = -1;
}

static uint32_t wait_for_job(uint32_t seen) {
  for (;;) {
    uint32_t gen = atomic_load(&generation);
    if (gen != seen) return gen;
    if (atomic_load(&spinning)) {
      if (switches_at_spin_start < 0) spin_started();
      for (int i = 0; i < 64; ++i) cpu_relax();
      continue;
    }
    spin_ended();
    uint32_t ticket = atomic_load(&wake_word);
    atomic_fetch_add(&sleepers, 1);
    if (atomic_load(&generation) == seen && !atomic_load(&spinning))
      futex(&wake_word, FUTEX_WAIT_PRIVATE, ticket);
    atomic_fetch_sub(&sleepers, 1);
  }
}

typedef struct { uint32_t seen; int index; } WorkerStart;
static WorkerStart worker_starts[MAX_THREADS];

static void* worker_main(void* arg) {
  WorkerStart* start = (WorkerStart*)arg;
  uint32_t seen = start->seen;
  in_pool = 1;
  for (;;) {
    seen = wait_for_job(seen);
    if (atomic_load(&shutting_down)) return NULL;
    run_tasks(seen, start->index);
  }
}

static void wake_workers(void) {
  atomic_fetch_add(&wake_word, 1);
  if (atomic_load(&sleepers) > 0) futex(&wake_word, FUTEX_WAKE_PRIVATE, INT_MAX);
}

/* Worker i runs on the i-th CPU this process may use; the caller, during an inference,
 * on the CPUs no worker has (else the scheduler may wake it on a spinning worker's CPU,
 * and the two share that CPU until it migrates: 2-4x slower inferences). */
static cpu_set_t caller_cpus;
static int have_caller_cpus;
static __thread cpu_set_t caller_saved;
static __thread int caller_pinned;

static void pin(pthread_t thread, int index) {
  cpu_set_t allowed, one;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return;
  for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    if (seen++ == index) {
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      if (pthread_setaffinity_np(thread, sizeof(one), &one) == 0) {
        if (!have_caller_cpus) { caller_cpus = allowed; have_caller_cpus = 1; }
        CPU_CLR(cpu, &caller_cpus);
      }
      return;
    }
  }
}

static void pin_caller(void) {
  if (!have_caller_cpus || CPU_COUNT(&caller_cpus) == 0) return;
  if (sched_getaffinity(0, sizeof(caller_saved), &caller_saved) != 0) return;
  caller_pinned = sched_setaffinity(0, sizeof(caller_cpus), &caller_cpus) == 0;
}

static void unpin_caller(void) {
  if (caller_pinned) sched_setaffinity(0, sizeof(caller_saved), &caller_saved);
  caller_pinned = 0;
}

static void start_workers(uint32_t gen) {
  int count = 1;
  for (int i = 1; i < pool_threads; ++i) {
    worker_starts[count] = (WorkerStart){gen, count};
    if (pthread_create(&workers[count], NULL, worker_main, &worker_starts[count]) != 0) break;
    pin(workers[count], count);
    ++count;
  }
  pool_threads = count; /* fewer threads if the system refused some */
  started = 1;
}

static void stop_workers(void) {
  if (!started) return;
  atomic_store(&shutting_down, 1);
  atomic_fetch_add(&generation, 1);
  atomic_store(&spinning, 0);
  wake_workers();
  for (int i = 1; i < pool_threads; ++i) pthread_join(workers[i], NULL);
  started = 0;
  atomic_store(&shutting_down, 0);
}

/* After fork() only the forking thread exists: the child starts its own workers. */
static void forget_workers_in_child(void) {
  started = 0;
  have_caller_cpus = 0;
  atomic_store(&spinning, 0);
  atomic_store(&sleepers, 0);
  pthread_mutex_init(&launch_lock, NULL);
}

__attribute__((constructor)) static void on_load(void) {
  pthread_atfork(NULL, NULL, forget_workers_in_child);
}

/* The library is unloaded (or the process exits): no worker may outlive its code. */
__attribute__((destructor)) static void on_unload(void) { stop_workers(); }

/* threads: the model's; never more than the CPUs this process may use (spinning workers
 * sharing a CPU only take turns). Returns the count the pool will use. */
int tvmdeploy_pool_configure(int threads) {
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0 && threads > CPU_COUNT(&allowed))
    threads = CPU_COUNT(&allowed);
  if (threads < 1) threads = 1;
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  pthread_mutex_lock(&launch_lock);
  if (!started) pool_threads = threads;
  int now = pool_threads;
  pthread_mutex_unlock(&launch_lock);
  return now;
}

/* An inference starts: workers spin between its kernels, unless spinning was recently
 * preempted (then they sleep between kernels for the next `backoff` inferences). */
void tvmdeploy_pool_begin(void) {
  pthread_mutex_lock(&launch_lock);
  if (backoff_left > 0) {
    --backoff_left;
  } else {
    atomic_store(&spinning, 1);
    if (started) wake_workers();
  }
  pthread_mutex_unlock(&launch_lock);
  pin_caller();
}

/* An inference ended: workers sleep until the next one. A worker reports a preemption
 * when it stops spinning, so what is read here may be the previous inference's report. */
void tvmdeploy_pool_end(void) {
  unpin_caller();
  pthread_mutex_lock(&launch_lock);
  if (atomic_exchange(&spinning, 0)) {
    if (atomic_exchange(&preempted, 0)) {
      backoff = backoff ? (backoff * 2 > MAX_BACKOFF ? MAX_BACKOFF : backoff * 2) : 1;
      backoff_left = backoff;
    } else {
      backoff = 0;
    }
  }
  pthread_mutex_unlock(&launch_lock);
}

/* Counters for tests: launches seen, those run on more than one thread, and the
 * inferences left before workers spin again. */
void tvmdeploy_pool_stats(uint64_t* out) {
  out[0] = atomic_load(&launches);
  out[1] = atomic_load(&parallel_launches);
  out[2] = (uint64_t)backoff_left;
}

int tvmdeploy_parallel_launch(FTVMParallelLambda fn, void* cdata, int num_task) {
  atomic_fetch_add(&launches, 1);
  /* Nested, single-threaded, or another thread's launch in progress: run here, whole. */
  if (in_pool || pool_threads <= 1 || pthread_mutex_trylock(&launch_lock) != 0) {
    TVMParallelGroupEnv env = {NULL, 1};
    int outer = in_pool;
    in_pool = 1;
    int rc = fn(0, &env, cdata);
    in_pool = outer;
    return rc;
  }
  atomic_fetch_add(&parallel_launches, 1);
  uint32_t gen = atomic_load(&generation);
  if (!started) start_workers(gen);
  job_fn = fn;
  job_data = cdata;
  job_env.sync_handle = NULL;
  job_env.num_task = num_task > 0 ? num_task : pool_threads * TASKS_PER_THREAD;
  atomic_store(&failed, 0);
  atomic_store(&done, 0);
  gen += 1;
  job_ranges = pool_threads < job_env.num_task ? pool_threads : job_env.num_task;
  /* Each range's word before its end: a thread late for the previous job that read the
   * old word then finds its compare-and-swap failing, whatever end it reads. */
  for (int t = 0; t < job_ranges; ++t)
    atomic_store(&range_next[t], ((uint64_t)gen << 32) | (uint32_t)((int64_t)job_env.num_task * t / job_ranges));
  for (int t = 0; t < job_ranges; ++t) range_end[t] = (int)((int64_t)job_env.num_task * (t + 1) / job_ranges);
  atomic_store(&generation, gen);
  if (!atomic_load(&spinning)) wake_workers();
  in_pool = 1;
  run_tasks(gen, 0);
  in_pool = 0;
  int64_t start = 0;
  uint32_t finished;
  /* Tasks still running on workers: while the inference spins, so does the caller;
   * otherwise (another process wants the CPUs) it sleeps after CALLER_WAIT_NS. */
  while ((finished = atomic_load(&done)) != (uint32_t)job_env.num_task) {
    for (int i = 0; i < 64; ++i) cpu_relax();
    if (atomic_load(&spinning)) continue;
    if (start == 0) {
      start = now_ns();
    } else if (now_ns() - start > CALLER_WAIT_NS) {
      atomic_store(&caller_sleeping, 1);
      futex(&done, FUTEX_WAIT_PRIVATE, finished);
      atomic_store(&caller_sleeping, 0);
    }
  }
  int rc = atomic_load(&failed) ? -1 : 0;
  pthread_mutex_unlock(&launch_lock);
  return rc;
}
