/*
 * bench_capi MODEL FRAME.ppm WARMUP ITERS: time stpm_detector_infer on one BGR8 frame.
 *
 * For every timed call it prints one line: the call's wall time and the time the runtime itself
 * reported (stpm_result.latency_ms), both in ms. Their difference is the C boundary: the
 * transition into Python, wrapping the caller's buffer, filling the result and copying the map.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <stpm_edge.h>

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
    stpm_detector *det = NULL;
    stpm_options opt;
    stpm_result r;
    int w, h, maxval, warmup, iters, i, k;
    unsigned char *rgb, *bgr;
    float *map;
    FILE *f;

    if (argc != 6) {
        fprintf(stderr, "usage: bench_capi MODEL FRAME.ppm WARMUP ITERS THREADS\n");
        return 2;
    }
    f = fopen(argv[2], "rb");
    if (f == NULL || fscanf(f, "P6 %d %d %d", &w, &h, &maxval) != 3 || fgetc(f) == EOF) return 1;
    rgb = malloc((size_t)w * h * 3);
    bgr = malloc((size_t)w * h * 3);
    map = malloc(sizeof(float) * w * h);
    if (fread(rgb, 1, (size_t)w * h * 3, f) != (size_t)w * h * 3) return 1;
    fclose(f);
    for (k = 0; k < w * h; k++) {
        bgr[3 * k] = rgb[3 * k + 2];
        bgr[3 * k + 1] = rgb[3 * k + 1];
        bgr[3 * k + 2] = rgb[3 * k];
    }
    warmup = atoi(argv[3]);
    iters = atoi(argv[4]);
    stpm_options_init(&opt);
    opt.threads = atoi(argv[5]);
    if (stpm_detector_create(argv[1], &opt, &det) != STPM_OK) {
        fprintf(stderr, "bench_capi: %s\n", stpm_last_error());
        return 1;
    }
    for (i = 0; i < warmup + iters; i++) {
        double t0 = now_ms(), t1;
        if (stpm_detector_infer(det, bgr, w, h, w * 3, STPM_PIXEL_BGR8, &r, map) != STPM_OK) {
            fprintf(stderr, "bench_capi: %s\n", stpm_last_error());
            return 1;
        }
        t1 = now_ms();
        if (i >= warmup) printf("%.4f %.4f\n", t1 - t0, r.latency_ms);
    }
    stpm_detector_destroy(det);
    free(rgb);
    free(bgr);
    free(map);
    return 0;
}
