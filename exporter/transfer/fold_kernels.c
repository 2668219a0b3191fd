/* Native float32 kernels for the warm fold (Python side: commandv.exporter.transfer.fold_native).
 *
 * cmdv_fold_batch folds a batch of layer pairs in one call. For each job (one layer pair) with
 * profiles X_D [n, dD] and X_R [n, dR] (row-major, row strides ldd / ldr floats), the lower
 * Cholesky factors L_R, L_D [n, n] of their Gram matrices (G = L Lᵀ, float32, packed into panels by
 * cmdv_pack_panels), and the donor edit's columns M [dD, kp] (row-major, kp a multiple of 16, unused
 * columns zero, filled from the job's blocks):
 *
 *   phase 1   Y = X_D @ M                            [n, kp]   rows of X_D split over the threads
 *   phase 2   Y[:, 8g:8g+8] <- G_R⁻¹ Y[:, 8g:8g+8]  for groups g < g1,
 *                                 G_D⁻¹ …            for g1 <= g < g2   (one group per task)
 *   phase 3   out = X_Rᵀ @ Y                         [dR, kp]  columns of X_R split over the threads,
 *             then columns [0, wa) copied to outA [dR, wa] and [8·g1, 8·g1 + wc) transposed to outC [wc, dR]
 *
 * M is filled by the kernels from the edit's column blocks (cmdv_block: float64 or float32, any element
 * strides), so the caller converts nothing. Each thread takes whole jobs in turn; once none are left it
 * joins an unfinished job and takes its remaining row chunks (phase 1), solve groups (phase 2) and
 * column chunks (phase 3), so a single pair runs on all threads (see "the batch" below).
 *
 * Y is kept as column groups of 8 (Y[g][i][0:8], job->Y holds kp/8 · n · 8 floats) so that two
 * threads solving different groups never share a cache line. Threads start once per batch.
 *
 * Products: one 16-float vector per 16 columns against 8 rows of X at a time (GCC/Clang vector
 * extensions: AVX-512, AVX2 pairs or NEON, as the build machine allows), with the rows read ahead.
 * Solves: forward substitution with a panel's 16 rows as the vector lanes, back substitution with
 * the 8 right-hand sides as the lanes (cmdv_chol_solve: the same solve for any [groups][n][8] B).
 * All accumulation is float32, like BLAS sgemm/strsm. Returns 0, or -1 when the task counters
 * cannot be allocated.
 */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef float v8 __attribute__((vector_size(32), aligned(4)));

#define ROWS 8         /* rows of X per register block (tuned among 4-16; benchmarks/export_speed.py) */
#define AHEAD 512      /* floats of each row read ahead in phase 1 (into L2: prefetcht1, which beat NTA) */
#define AHEAD_T 256    /* … and in phase 3 */
#define MAX_THREADS 64

typedef struct {
    const void *src; /* element [k, c] at src[k·rs + c·cs] (elements, not bytes), k < dD */
    long rs, cs, w;
    long col;        /* first column of M it fills */
    long f64;        /* 1: double, 0: float */
} cmdv_block;

typedef struct {
    const float *XD;
    long dD, ldd;
    const float *XR;
    long dR, ldr;
    const float *PR, *PD;
    float *M;
    long kp, g1, g2;
    float *Y;
    float *out;
    float *outA, *outC;
    long wa, wc;
    const cmdv_block *blocks; /* the columns of M, filled by the kernels */
    long nblocks;
} cmdv_fold_job;

static long min_l(long a, long b) { return a < b ? a : b; }

/* ------------------------------------------------------------------ phase 1: Y[lo:hi] = X_D[lo:hi] @ M */

static void x_times_m(const cmdv_fold_job *j, long n, long lo, long hi) {
    const long kp = j->kp, d = j->dD, ld = j->ldd;
    for (long p = 0; p < kp; p += 16) {
        float *y0 = j->Y + (p / 8) * n * 8, *y1 = y0 + n * 8; /* column groups p/8 and p/8 + 1 */
        for (long i0 = lo; i0 < hi; i0 += ROWS) {
            const float *x = j->XD + i0 * ld;
            const float *m = j->M + p;
            v16 acc[ROWS];
            for (int r = 0; r < ROWS; r++) acc[r] = (v16){0};
            if (hi - i0 >= ROWS) {
                long k0 = 0;
                const int more = i0 + 2 * ROWS <= n;
                for (; k0 + 16 <= d; k0 += 16) {
                    const long pk = k0 + AHEAD; /* past the row's end: the next block's rows from their start */
                    const float *pf = pk < d ? x + pk : (more && pk - d < d ? x + ROWS * ld + (pk - d) : NULL);
                    if (pf)
                        for (int r = 0; r < ROWS; r++) __builtin_prefetch(pf + r * ld, 0, 2);
                    for (long k = k0; k < k0 + 16; k++) {
                        v16 mk = *(const v16 *)(m + k * kp);
                        for (int r = 0; r < ROWS; r++) acc[r] += x[r * ld + k] * mk;
                    }
                }
                for (long k = k0; k < d; k++) {
                    v16 mk = *(const v16 *)(m + k * kp);
                    for (int r = 0; r < ROWS; r++) acc[r] += x[r * ld + k] * mk;
                }
            } else {
                long rows = hi - i0;
                for (long k = 0; k < d; k++) {
                    v16 mk = *(const v16 *)(m + k * kp);
                    for (int r = 0; r < rows; r++) acc[r] += x[r * ld + k] * mk;
                }
            }
            for (int r = 0; r < ROWS && i0 + r < hi; r++) {
                memcpy(y0 + (i0 + r) * 8, &acc[r], 32);
                memcpy(y1 + (i0 + r) * 8, (const float *)&acc[r] + 8, 32);
            }
        }
    }
}

/* ------------------------------------------------------------------ phase 2: B <- (L Lᵀ)⁻¹ B, B [n][8]
 * Packed factor ("panels"): panel b holds rows i0 = SB·b … i0+SB-1 of L as P_b[k][r] = L[i0+r, k] for
 * k < i0+SB (zero above the diagonal and for rows >= n), so both solves read one contiguous stream per
 * panel, and the back substitution finds in cache what the forward one just read. Panel b starts at
 * SB·SB·b(b+1)/2 floats.
 */

#define SB 16

static long panel_offset(long b) { return SB * SB * b * (b + 1) / 2; }

long cmdv_panels_size(long n) { return panel_offset((n + SB - 1) / SB); }

int cmdv_pack_panels(const float *L, long ld, long n, float *P) {
    long nb = (n + SB - 1) / SB;
    for (long b = 0; b < nb; b++) {
        long i0 = b * SB;
        float *pb = P + panel_offset(b);
        for (long k = 0; k < i0 + SB; k++)
            for (int r = 0; r < SB; r++) {
                long i = i0 + r;
                pb[k * SB + r] = (i < n && k <= i) ? L[i * ld + k] : 0.0f;
            }
    }
    return 0;
}

static void chol_solve8(const float *P, long n, float *B) {
    v8 *y = (v8 *)B;
    const long nb = (n + SB - 1) / SB;
    for (long b = 0; b < nb; b++) { /* L y = b, top down: the panel's 16 rows as the 16 lanes */
        const long i0 = b * SB, rows = min_l(SB, n - i0);
        const float *pb = P + panel_offset(b);
        v16 acc[8];
        for (int c = 0; c < 8; c++) acc[c] = (v16){0};
        for (long k = 0; k < i0; k++) {
            v16 l;
            memcpy(&l, pb + k * SB, 64);
            const float *yk = B + k * 8;
            for (int c = 0; c < 8; c++) acc[c] += l * yk[c];
        }
        float t[8][SB];
        memcpy(t, acc, sizeof t);
        for (int r = 0; r < rows; r++) {
            v8 v = y[i0 + r];
            for (int c = 0; c < 8; c++) v[c] -= t[c][r];
            for (int q = 0; q < r; q++) v -= pb[(i0 + q) * SB + r] * y[i0 + q];
            y[i0 + r] = v / pb[(i0 + r) * SB + r];
        }
    }
    for (long b = nb - 1; b >= 0; b--) { /* Lᵀ x = y, bottom up; then y[k] -= Σ_r L[i0+r, k] x[r] for k < i0 */
        const long i0 = b * SB, rows = min_l(SB, n - i0);
        const float *pb = P + panel_offset(b);
        v8 x[SB];
        for (int r = rows - 1; r >= 0; r--) {
            v8 v = y[i0 + r];
            for (int q = r + 1; q < rows; q++) v -= pb[(i0 + r) * SB + q] * x[q];
            x[r] = v / pb[(i0 + r) * SB + r];
            y[i0 + r] = x[r];
        }
        for (int r = rows; r < SB; r++) x[r] = (v8){0};
        for (long k = 0; k < i0; k++) {
            const float *l = pb + k * SB;
            v8 a = y[k], a2 = (v8){0}; /* two chains: half the dependent-FMA latency per k */
            for (int r = 0; r < SB; r += 2) {
                a -= l[r] * x[r];
                a2 -= l[r + 1] * x[r + 1];
            }
            y[k] = a + a2;
        }
    }
}

int cmdv_chol_solve(const float *P, long n, float *B, long groups) {
    for (long g = 0; g < groups; g++) chol_solve8(P, n, B + g * n * 8);
    return 0;
}

/* ------------------------------------------------------------------ phase 3: out[c0:c1] = X_R[:, c0:c1]ᵀ @ Y */

static void xt_times_y(const cmdv_fold_job *j, long n, long c0, long c1) {
    const long kp = j->kp, ld = j->ldr;
    for (long p = 0; p < kp; p += 16) {
        const float *y0 = j->Y + (p / 8) * n * 8, *y1 = y0 + n * 8;
        float *o = j->out + p; /* row k of out starts at o + k * kp */
        for (long k = c0; k < c1; k++) memset(o + k * kp, 0, 64);
        long i = 0;
        for (; i + ROWS <= n; i += ROWS) {
            v16 z[ROWS];
            for (int r = 0; r < ROWS; r++) {
                memcpy(&z[r], y0 + (i + r) * 8, 32);
                memcpy((float *)&z[r] + 8, y1 + (i + r) * 8, 32);
            }
            const float *x = j->XR + i * ld;
            /* read ahead along this task's traversal: past column c1 it continues with the next rows at c0 */
            const int more = i + 2 * ROWS <= n;
            for (long k0 = c0; k0 < c1; k0 += 16) {
                const long pk = k0 + AHEAD_T;
                const float *pf = pk < c1 ? x + pk : (more && c0 + (pk - c1) < c1 ? x + ROWS * ld + c0 + (pk - c1) : NULL);
                if (pf)
                    for (int r = 0; r < ROWS; r++) __builtin_prefetch(pf + r * ld, 0, 2);
                long ke = min_l(k0 + 16, c1);
                for (long k = k0; k < ke; k++) {
                    v16 acc;
                    memcpy(&acc, o + k * kp, 64);
                    for (int r = 0; r < ROWS; r++) acc += x[r * ld + k] * z[r];
                    memcpy(o + k * kp, &acc, 64);
                }
            }
        }
        for (; i < n; i++) {
            v16 z;
            memcpy(&z, y0 + i * 8, 32);
            memcpy((float *)&z + 8, y1 + i * 8, 32);
            const float *x = j->XR + i * ld;
            for (long k = c0; k < c1; k++) {
                v16 acc;
                memcpy(&acc, o + k * kp, 64);
                acc += x[k] * z;
                memcpy(o + k * kp, &acc, 64);
            }
        }
    }
    /* The results in their final layouts: columns [0, wa) row-major into outA [dR, wa], columns
       [8·g1, 8·g1 + wc) transposed into outC [wc, dR]. */
    const long cC = j->g1 * 8;
    for (long k = c0; k < c1; k++) {
        const float *row = j->out + k * kp;
        if (j->wa > 0) memcpy(j->outA + k * j->wa, row, (size_t)j->wa * sizeof(float));
        for (long c = 0; c < j->wc; c++) j->outC[c * j->dR + k] = row[cC + c];
    }
}

/* ------------------------------------------------------------------ the batch, all threads
 * Each job runs as stages of small tasks taken from the job's own counters: filling M, row chunks of
 * phase 1, the solve groups, column chunks of phase 3. A thread claims whole jobs in turn from the
 * batch counter (one streams a profile while another solves, which beats every phase on all threads);
 * once none are left it joins an unfinished job and takes its remaining tasks, so the threads finish
 * together instead of one idling through the other's last job, and a single job runs on all threads.
 * Between stages a thread waits (spinning, then yielding) for the tasks other threads hold.
 */

#define CH1 16   /* row blocks (ROWS rows each) per phase-1 task */
#define CH3 1024 /* columns per phase-3 task */

typedef struct {
    long m_ready, p1_next, p1_done, s_next, s_done, p3_next;
} job_state;

typedef struct {
    const cmdv_fold_job *jobs;
    job_state *st;
    long njobs, n, next;
} batch_t;

static void relax(long spins) {
    if (spins % 4096 == 4095) {
        sched_yield();
    } else {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield");
#endif
    }
}

static void wait_for(const long *counter, long target) {
    for (long spins = 0; __atomic_load_n(counter, __ATOMIC_ACQUIRE) < target; spins++) relax(spins);
}

/* M [dD, kp] from the edit's column blocks (float64 or float32, any element strides); unused columns zero. */
static void fill_m(const cmdv_fold_job *j) {
    float *M = j->M;
    for (long k = 0; k < j->dD; k++) memset(M + k * j->kp, 0, (size_t)j->kp * sizeof(float));
    for (long b = 0; b < j->nblocks; b++) {
        const cmdv_block *bl = &j->blocks[b];
        for (long k = 0; k < j->dD; k++) {
            float *row = M + k * j->kp + bl->col;
            if (bl->f64) {
                const double *src = (const double *)bl->src + k * bl->rs;
                for (long c = 0; c < bl->w; c++) row[c] = (float)src[c * bl->cs];
            } else {
                const float *src = (const float *)bl->src + k * bl->rs;
                for (long c = 0; c < bl->w; c++) row[c] = src[c * bl->cs];
            }
        }
    }
}

static long p1_tasks(long n) { return ((n + ROWS - 1) / ROWS + CH1 - 1) / CH1; }
static long p3_tasks(const cmdv_fold_job *j) { return (j->dR + CH3 - 1) / CH3; }

static void solve_group(const cmdv_fold_job *j, long n, long g) {
    chol_solve8(g < j->g1 ? j->PR : j->PD, n, j->Y + g * n * 8);
}

/* Take tasks of job b until none are left (its owner, or a helper that joined it). */
static void run_job(batch_t *q, long b) {
    const cmdv_fold_job *j = &q->jobs[b];
    job_state *s = &q->st[b];
    const long n = q->n, t1 = p1_tasks(n), t3 = p3_tasks(j);
    wait_for(&s->m_ready, 1);
    for (long c; (c = __atomic_fetch_add(&s->p1_next, 1, __ATOMIC_RELAXED)) < t1;) {
        x_times_m(j, n, c * CH1 * ROWS, min_l((c + 1) * CH1 * ROWS, n));
        __atomic_fetch_add(&s->p1_done, 1, __ATOMIC_RELEASE);
    }
    wait_for(&s->p1_done, t1);
    for (long g; (g = __atomic_fetch_add(&s->s_next, 1, __ATOMIC_RELAXED)) < j->g2;) {
        solve_group(j, n, g);
        __atomic_fetch_add(&s->s_done, 1, __ATOMIC_RELEASE);
    }
    wait_for(&s->s_done, j->g2);
    for (long c; (c = __atomic_fetch_add(&s->p3_next, 1, __ATOMIC_RELAXED)) < t3;)
        xt_times_y(j, n, c * CH3, min_l((c + 1) * CH3, j->dR));
}

static void *batch_worker(void *arg) {
    batch_t *q = arg;
    for (long b; (b = __atomic_fetch_add(&q->next, 1, __ATOMIC_RELAXED)) < q->njobs;) {
        fill_m(&q->jobs[b]);
        __atomic_store_n(&q->st[b].m_ready, 1, __ATOMIC_RELEASE);
        run_job(q, b);
    }
    for (;;) { /* every job is claimed: help with the first one that still has phase-3 tasks */
        long b = 0;
        while (b < q->njobs && __atomic_load_n(&q->st[b].p3_next, __ATOMIC_RELAXED) >= p3_tasks(&q->jobs[b])) b++;
        if (b == q->njobs) return NULL;
        run_job(q, b);
    }
}

int cmdv_fold_batch(const cmdv_fold_job *jobs, long njobs, long n, int nthreads) {
    int want = nthreads < 1 ? 1 : (nthreads > MAX_THREADS ? MAX_THREADS : nthreads);
    batch_t q = {jobs, calloc((size_t)(njobs > 0 ? njobs : 1), sizeof(job_state)), njobs, n, 0};
    if (q.st == NULL) return -1;
    pthread_t th[MAX_THREADS];
    int nt = 1;
    for (; nt < want; nt++)
        if (pthread_create(&th[nt], NULL, batch_worker, &q) != 0) break; /* run with the threads we have */
    batch_worker(&q);
    for (int t = 1; t < nt; t++) pthread_join(th[t], NULL);
    free(q.st);
    return 0;
}

long cmdv_fold_job_size(void) { return (long)sizeof(cmdv_fold_job); }
