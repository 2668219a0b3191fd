/*
 * cmdv_pack_tool - run the C pack reader on files and report, one JSON object per line:
 *
 *   cmdv_pack_tool [--model FINGERPRINT ARCH N_LAYER D_MODEL] [--dump DIR] FILE...
 *
 * Each line: {"path", "code", "status", "msg"} and, for an accepted pack, "name", "n_entries",
 * "d_model", "n_layer", "entries": [{"layer", "rank", "q", "act", "first", "last", "strength",
 * "tensors"}]. --model also runs cmdv_pack_check_model (fingerprint "-" = not checked).
 * --dump writes every tensor of an accepted pack as raw float32 to DIR/<index>.<entry>.<X>.f32
 * (index = position of FILE on the command line). Exit status: 0 (each file's result is in its line).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmdv_text.h"

#include "cmdv_pack.h"

static void json_str(const char *s, size_t n) { cmdv_json_write_str(stdout, s, n); }

static int dump(const char *dir, int index, const cmdv_pack *p) {
    for (int32_t i = 0; i < p->n_entries; i++) {
        const cmdv_pack_entry *e = &p->entries[i];
        const size_t d = (size_t)p->d_model, r = (size_t)e->rank, q = (size_t)e->q;
        const struct { char name; const float *x; size_t n; } t[] = {
            {'A', e->A, d * r}, {'b', e->b, r},     {'C', e->C, r * d},
            {'P', e->P, d * q}, {'Q', e->Q, q * d}, {'e', e->e, d}};
        for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
            if (!t[k].x) continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/%d.%d.%c.f32", dir, index, (int)i, t[k].name);
            FILE *f = fopen(path, "wb");
            if (!f) { fprintf(stderr, "cannot write %s\n", path); return 1; }
            const size_t w = t[k].n ? fwrite(t[k].x, sizeof(float), t[k].n, f) : 0;
            fclose(f);
            if (w != t[k].n) { fprintf(stderr, "short write %s\n", path); return 1; }
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *fp = NULL, *arch = NULL, *dir = NULL;
    int n_layer = 0, d_model = 0, check_model = 0, a = 1;
    while (a < argc && strncmp(argv[a], "--", 2) == 0) {
        if (strcmp(argv[a], "--model") == 0 && a + 4 < argc) {
            fp = strcmp(argv[a + 1], "-") == 0 ? NULL : argv[a + 1];
            arch = argv[a + 2];
            n_layer = atoi(argv[a + 3]);
            d_model = atoi(argv[a + 4]);
            check_model = 1;
            a += 5;
        } else if (strcmp(argv[a], "--dump") == 0 && a + 1 < argc) {
            dir = argv[a + 1];
            a += 2;
        } else {
            fprintf(stderr, "usage: %s [--model FP ARCH N_LAYER D_MODEL] [--dump DIR] FILE...\n", argv[0]);
            return 2;
        }
    }
    for (int i = a; i < argc; i++) {
        cmdv_pack *p = NULL;
        cmdv_error err;
        int rc = cmdv_pack_load(argv[i], &p, &err);
        if (!rc && check_model) rc = cmdv_pack_check_model(p, fp, arch, n_layer, d_model, 0, &err);
        printf("{\"path\": ");
        json_str(argv[i], strlen(argv[i]));
        printf(", \"code\": %d, \"status\": \"%s\", \"msg\": ", rc, cmdv_pack_status_name(rc));
        json_str(err.msg, strlen(err.msg));
        if (!rc) {
            printf(", \"name\": ");
            json_str(p->name.s, p->name.len);
            printf(", \"n_entries\": %d, \"d_model\": %d, \"n_layer\": %d, \"entries\": [", (int)p->n_entries,
                   (int)p->d_model, (int)p->n_layer);
            for (int32_t k = 0; k < p->n_entries; k++) {
                const cmdv_pack_entry *e = &p->entries[k];
                printf("%s{\"layer\": %d, \"rank\": %d, \"q\": %d, \"act\": %d, \"first\": %d, \"last\": %d, "
                       "\"strength\": %.9g, \"tensors\": \"%s%s%s%s%s%s\"}",
                       k ? ", " : "", (int)e->layer, (int)e->rank, (int)e->q, (int)e->act, (int)e->pos_first,
                       (int)e->pos_last, (double)e->strength, e->A ? "A" : "", e->b ? "b" : "", e->C ? "C" : "",
                       e->P ? "P" : "", e->Q ? "Q" : "", e->e ? "e" : "");
            }
            printf("]");
            if (dir && dump(dir, i - a, p)) { cmdv_pack_free(p); return 1; }
        }
        printf("}\n");
        fflush(stdout);
        cmdv_pack_free(p);
    }
    return 0;
}
