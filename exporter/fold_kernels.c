/* Native float32 kernels for the warm fold (Python side: commandv.exporter.fold_native).
 *
 * cmdv_fold_batch folds a batch of layer pairs in one call. For each job (one layer pair) with
 * profiles X_D [n, dD] and X_R [n, dR] (row-major, row strides ldd / ldr floats), the lower
 * Cholesky factors L_R, L_D [n, n] of their Gram matrices (G = L Lᵀ, float32, packed into panels by
 * cmdv_pack_panels), and the donor edit's columns M [dD, kp] (row-major, kp a multiple of 16, unused
 * columns zero):
 *
 *   phase 1   Y = X_D @ M                            [n, kp]   rows of X_D split over the threads
 *   phase 2   Y[:, 8g:8g+8] <- G_R⁻¹ Y[:, 8g:8g+8]  for groups g < g1,
 *                                 G_D⁻¹ …            for g1 <= g < g2   (one group per task)
 *   phase 3   out = X_Rᵀ @ Y                         [dR, kp]  columns of X_R split over the threads,
 *             then columns [0, wa) copied to outA [dR, wa] and [8·g1, 8·g1 + wc) transposed to outC [wc, dR]
 *
 * With at least as many jobs as threads, each thread takes whole jobs in turn (all three phases);
 * the jobs left over (njobs % threads, e.g. a single pair) run each phase on all threads.
 *
 * Y is kept as column groups of 8 (Y[g][i][0:8], job->Y holds kp/8 · n · 8 floats) so that two
 * threads solving different groups never share a cache line. Threads start once per batch.
 *
 * Products: one 16-float vector per 16 columns against 8 rows of X at a time (GCC/Clang vector
 * extensions: AVX-512, AVX2 pairs or NEON, as the build machine allows), with the rows read ahead.
 * Solves: forward substitution with a panel's 16 rows as the vector lanes, back substitution with
 * the 8 right-hand sides as the lanes (cmdv_chol_solve: the same solve for any [groups][n][8] B).
 * All accumulation is float32, like BLAS sgemm/strsm. Returns 0, or -1 when a mutex or condition
 * variable cannot be initialised.
 */
#include <pthread.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef float v8 __attribute__((vector_size(32), aligned(4)));

#define ROWS 8         /* rows of X per register block (fastest of 4-16 measured on a 2-core EPYC) */
#define AHEAD 512      /* floats of each row read ahead in phase 1 */
#define AHEAD_T 256    /* … and in phase 3 */
#define MAX_THREADS 64

typedef struct {
    const float *XD;
    long dD, ldd;
    const float *XR;
    long dR, ldr;
    const float *PR, *PD;
    const float *M;
    long kp, g1, g2;
    float *Y;
    float *out;
    float *outA, *outC;
    long wa, wc;
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
                for (; k0 + 16 <= d; k0 += 16) {
                    for (int r = 0; r < ROWS; r++) __builtin_prefetch(x + r * ld + k0 + AHEAD, 0, 0);
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
            for (long k0 = c0; k0 < c1; k0 += 16) {
                for (int r = 0; r < ROWS; r++) __builtin_prefetch(x + r * ld + k0 + AHEAD_T, 0, 0);
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

/* ------------------------------------------------------------------ the batch, all threads */

typedef struct {
    const cmdv_fold_job *jobs;
    long njobs, n, next;
    int nt, go, waiting, generation;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} batch_t;

typedef struct {
    batch_t *q;
    int t;
} worker_t;

static void barrier_wait(batch_t *q) {
    pthread_mutex_lock(&q->mu);
    int gen = q->generation;
    if (++q->waiting == q->nt) {
        q->waiting = 0;
        q->generation++;
        pthread_cond_broadcast(&q->cv);
    } else {
        while (gen == q->generation) pthread_cond_wait(&q->cv, &q->mu);
    }
    pthread_mutex_unlock(&q->mu);
}

static void solve_group(const cmdv_fold_job *j, long n, long g) {
    chol_solve8(g < j->g1 ? j->PR : j->PD, n, j->Y + g * n * 8);
}

static void *batch_job(void *arg) {
    const worker_t *w = arg;
    batch_t *q = w->q;
    pthread_mutex_lock(&q->mu); /* wait until the caller knows how many threads started */
    while (!q->go) pthread_cond_wait(&q->cv, &q->mu);
    pthread_mutex_unlock(&q->mu);
    const int t = w->t, nt = q->nt;
    const long n = q->n, blocks = (n + ROWS - 1) / ROWS;
    /* Whole jobs first, one thread each, taken in turn from a shared counter: the threads drift
       into different phases (one streams a profile while the other solves), which measured ~20 %
       faster than running each phase on all threads. The last njobs % nt jobs run phase by phase. */
    const long whole = q->njobs - q->njobs % nt;
    for (;;) {
        long b = __atomic_fetch_add(&q->next, 1, __ATOMIC_RELAXED);
        if (b >= whole) break;
        const cmdv_fold_job *j = &q->jobs[b];
        x_times_m(j, n, 0, n);
        for (long g = 0; g < j->g2; g++) solve_group(j, n, g);
        xt_times_y(j, n, 0, j->dR);
    }
    for (long b = whole; b < q->njobs; b++) { /* phase 1: a share of the job's rows */
        long lo = blocks * t / nt * ROWS, hi = min_l(blocks * (t + 1) / nt * ROWS, n);
        if (lo < hi) x_times_m(&q->jobs[b], n, lo, hi);
    }
    if (whole == q->njobs) return NULL;
    barrier_wait(q);
    long task = 0; /* phase 2: the solves, dealt round-robin */
    for (long b = whole; b < q->njobs; b++) {
        const cmdv_fold_job *j = &q->jobs[b];
        for (long g = 0; g < j->g2; g++, task++)
            if (task % nt == t) solve_group(j, n, g);
    }
    barrier_wait(q);
    for (long b = whole; b < q->njobs; b++) { /* phase 3: a share of the job's columns */
        const cmdv_fold_job *j = &q->jobs[b];
        long c0 = j->dR * t / nt, c1 = j->dR * (t + 1) / nt;
        if (c0 < c1) xt_times_y(j, n, c0, c1);
    }
    return NULL;
}

int cmdv_fold_batch(const cmdv_fold_job *jobs, long njobs, long n, int nthreads) {
    int want = nthreads < 1 ? 1 : (nthreads > MAX_THREADS ? MAX_THREADS : nthreads);
    batch_t q;
    memset(&q, 0, sizeof q);
    q.jobs = jobs;
    q.njobs = njobs;
    q.n = n;
    q.nt = 1;
    worker_t w[MAX_THREADS];
    pthread_t th[MAX_THREADS];
    if (pthread_mutex_init(&q.mu, NULL) != 0) return -1;
    if (pthread_cond_init(&q.cv, NULL) != 0) {
        pthread_mutex_destroy(&q.mu);
        return -1;
    }
    int nt = 1;
    for (; nt < want; nt++) {
        w[nt] = (worker_t){&q, nt};
        if (pthread_create(&th[nt], NULL, batch_job, &w[nt]) != 0) break; /* run with the threads we have */
    }
    pthread_mutex_lock(&q.mu);
    q.nt = nt;
    q.go = 1;
    pthread_cond_broadcast(&q.cv);
    pthread_mutex_unlock(&q.mu);
    w[0] = (worker_t){&q, 0};
    batch_job(&w[0]);
    for (int t = 1; t < nt; t++) pthread_join(th[t], NULL);
    pthread_cond_destroy(&q.cv);
    pthread_mutex_destroy(&q.mu);
    return 0;
}

long cmdv_fold_job_size(void) { return (long)sizeof(cmdv_fold_job); }
