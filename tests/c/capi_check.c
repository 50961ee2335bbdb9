/*
 * capi_check: what tests/test_capi.py drives through libstpm_edge.
 *
 *   capi_check errors MODEL CORRUPT.onnx every error path: status + message, no crash
 *   capi_check create MODEL              create and destroy once: prints the status and message
 *   capi_check formats MODEL IMAGE.ppm OUT
 *                                        one frame in every pixel format / a padded stride;
 *                                        writes OUT.<format>.f32 (raw float32 map), prints scores
 *   capi_check threads MODEL DIR REPEAT  one handle alone vs two threads with two handles vs two
 *                                        threads sharing one handle: identical scores and maps
 */
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stpm_edge.h>

#define MAX_IMAGES 64

typedef struct image {
    int width, height;
    unsigned char *rgb; /* 3 bytes per pixel, R G B */
} image;

static int failures = 0;

static int read_ppm(const char *path, image *img)
{
    int maxval = 0;
    size_t n;
    FILE *f = fopen(path, "rb");
    if (f == NULL) return -1;
    if (fscanf(f, "P6 %d %d %d", &img->width, &img->height, &maxval) != 3 || maxval != 255 || fgetc(f) == EOF) {
        fclose(f);
        return -1;
    }
    n = (size_t)img->width * img->height * 3;
    img->rgb = malloc(n);
    if (fread(img->rgb, 1, n, f) != n) {
        fclose(f);
        return -1;
    }
    fclose(f);
    return 0;
}

static void expect(const char *name, stpm_status got, stpm_status want)
{
    const char *msg = stpm_last_error();
    printf("%s\t%d\t%s\n", name, (int)got, got == STPM_OK ? "" : msg);
    if (got != want) {
        printf("FAIL %s: status %d (%s), expected %d\n", name, (int)got, stpm_status_string(got), (int)want);
        failures++;
    } else if (got != STPM_OK && (msg == NULL || msg[0] == '\0')) {
        printf("FAIL %s: no error message\n", name);
        failures++;
    }
}

static int run_errors(const char *model, const char *corrupt)
{
    stpm_detector *det = (stpm_detector *)0x1, *bad = NULL;
    stpm_options opt;
    stpm_result r;
    unsigned char px[16 * 16 * 4];
    float map[16 * 16];
    memset(px, 128, sizeof px);

    printf("version\t%s\t%d\n", stpm_version(), (int)stpm_abi_version());
    if (!STPM_CHECK_ABI()) { printf("FAIL abi\n"); failures++; }
    if (strcmp(stpm_status_string((stpm_status)99), "unknown status") != 0) { printf("FAIL status_string\n"); failures++; }

    expect("create_null_out", stpm_detector_create(model, NULL, NULL), STPM_ERROR_INVALID_ARGUMENT);
    expect("create_null_path", stpm_detector_create(NULL, NULL, &det), STPM_ERROR_INVALID_ARGUMENT);
    if (det != NULL) { printf("FAIL create_null_path left *out set\n"); failures++; }
    expect("create_missing_file", stpm_detector_create("/nonexistent/model.onnx", NULL, &bad), STPM_ERROR_MODEL);
    expect("create_not_a_model", stpm_detector_create("/etc/hostname", NULL, &bad), STPM_ERROR_MODEL);
    expect("create_corrupt_onnx", stpm_detector_create(corrupt, NULL, &bad), STPM_ERROR_MODEL);
    stpm_options_init(&opt);
    opt.struct_size = 3;
    expect("create_bad_struct_size", stpm_detector_create(model, &opt, &bad), STPM_ERROR_INVALID_ARGUMENT);
    stpm_options_init(&opt);
    opt.backend = "no-such-backend";
    expect("create_bad_backend", stpm_detector_create(model, &opt, &bad), STPM_ERROR_INVALID_ARGUMENT);
    stpm_options_init(&opt);
    opt.threads = -1;
    expect("create_negative_threads", stpm_detector_create(model, &opt, &bad), STPM_ERROR_INVALID_ARGUMENT);
    if (bad != NULL) { printf("FAIL failed create returned a handle\n"); failures++; }

    stpm_options_init(&opt);
    opt.threshold = 0.25;
    expect("create_ok", stpm_detector_create(model, &opt, &det), STPM_OK);
    expect("infer_null_handle", stpm_detector_infer(NULL, px, 16, 16, 48, STPM_PIXEL_BGR8, &r, NULL),
           STPM_ERROR_INVALID_HANDLE);
    expect("infer_made_up_handle", stpm_detector_infer((stpm_detector *)0x1234, px, 16, 16, 48, STPM_PIXEL_BGR8, &r,
                                                       NULL), STPM_ERROR_INVALID_HANDLE);
    expect("infer_null_pixels", stpm_detector_infer(det, NULL, 16, 16, 48, STPM_PIXEL_BGR8, &r, NULL),
           STPM_ERROR_INVALID_ARGUMENT);
    expect("infer_null_result", stpm_detector_infer(det, px, 16, 16, 48, STPM_PIXEL_BGR8, NULL, NULL),
           STPM_ERROR_INVALID_ARGUMENT);
    expect("infer_zero_width", stpm_detector_infer(det, px, 0, 16, 48, STPM_PIXEL_BGR8, &r, NULL),
           STPM_ERROR_INVALID_ARGUMENT);
    expect("infer_negative_height", stpm_detector_infer(det, px, 16, -2, 48, STPM_PIXEL_BGR8, &r, NULL),
           STPM_ERROR_INVALID_ARGUMENT);
    expect("infer_huge_width", stpm_detector_infer(det, px, 100000, 1, 300000, STPM_PIXEL_BGR8, &r, NULL),
           STPM_ERROR_INVALID_ARGUMENT);
    expect("infer_short_stride", stpm_detector_infer(det, px, 16, 16, 47, STPM_PIXEL_BGR8, &r, NULL),
           STPM_ERROR_INVALID_ARGUMENT);
    expect("infer_short_stride_bgra", stpm_detector_infer(det, px, 16, 16, 48, STPM_PIXEL_BGRA8, &r, NULL),
           STPM_ERROR_INVALID_ARGUMENT);
    expect("infer_bad_format", stpm_detector_infer(det, px, 16, 16, 48, (stpm_pixel_format)42, &r, NULL),
           STPM_ERROR_INVALID_ARGUMENT);
    expect("infer_ok", stpm_detector_infer(det, px, 16, 16, 48, STPM_PIXEL_BGR8, &r, map), STPM_OK);
    if (fabsf(r.threshold - 0.25f) > 1e-7f) { printf("FAIL threshold option not applied\n"); failures++; }
    if (r.is_anomalous != (r.score >= r.threshold)) { printf("FAIL is_anomalous\n"); failures++; }
    expect("info_null", stpm_detector_get_info(det, NULL), STPM_ERROR_INVALID_ARGUMENT);
    expect("destroy_ok", stpm_detector_destroy(det), STPM_OK);
    expect("infer_destroyed", stpm_detector_infer(det, px, 16, 16, 48, STPM_PIXEL_BGR8, &r, NULL),
           STPM_ERROR_INVALID_HANDLE);
    expect("info_destroyed", stpm_detector_get_info(det, &(stpm_detector_info){0}), STPM_ERROR_INVALID_HANDLE);
    expect("destroy_twice", stpm_detector_destroy(det), STPM_ERROR_INVALID_HANDLE);
    expect("destroy_null", stpm_detector_destroy(NULL), STPM_OK);
    printf("errors: %d failures\n", failures);
    return failures != 0;
}

static int write_f32(const char *prefix, const char *name, const float *map, size_t n)
{
    char path[4096];
    FILE *f;
    snprintf(path, sizeof path, "%s.%s.f32", prefix, name);
    f = fopen(path, "wb");
    if (f == NULL || fwrite(map, sizeof(float), n, f) != n) return -1;
    return fclose(f);
}

static int run_formats(const char *model, const char *ppm, const char *out)
{
    static const char *names[] = {"bgr8", "rgb8", "gray8", "bgra8", "rgba8", "bgr8_padded"};
    stpm_detector *det = NULL;
    image img;
    int k, w, h, i;
    if (read_ppm(ppm, &img) != 0) { printf("FAIL cannot read %s\n", ppm); return 1; }
    if (stpm_detector_create(model, NULL, &det) != STPM_OK) { printf("FAIL %s\n", stpm_last_error()); return 1; }
    w = img.width;
    h = img.height;
    for (k = 0; k < 6; k++) {
        int bpp = k == 2 ? 1 : (k == 3 || k == 4) ? 4 : 3;
        int stride = w * bpp + (k == 5 ? 13 : 0);
        stpm_pixel_format fmt = k == 5 ? STPM_PIXEL_BGR8 : (stpm_pixel_format)k;
        unsigned char *buf = malloc((size_t)stride * h);
        float *map = malloc(sizeof(float) * w * h);
        stpm_result r;
        memset(buf, 0xEE, (size_t)stride * h); /* padding bytes must never be read as pixels */
        for (i = 0; i < w * h; i++) {
            const unsigned char *p = img.rgb + 3 * i;
            unsigned char *q = buf + (size_t)(i / w) * stride + (size_t)(i % w) * bpp;
            int rgb_order = (fmt == STPM_PIXEL_RGB8 || fmt == STPM_PIXEL_RGBA8);
            if (bpp == 1) {
                q[0] = p[1]; /* the green channel as the grey image */
            } else {
                q[0] = rgb_order ? p[0] : p[2];
                q[1] = p[1];
                q[2] = rgb_order ? p[2] : p[0];
                if (bpp == 4) q[3] = 7;
            }
        }
        if (stpm_detector_infer(det, buf, w, h, stride, fmt, &r, map) != STPM_OK) {
            printf("FAIL %s: %s\n", names[k], stpm_last_error());
            failures++;
        } else {
            printf("%s\t%.9g\t%d\t%d\n", names[k], r.score, (int)r.is_anomalous, (int)r.num_boxes);
            if (write_f32(out, names[k], map, (size_t)w * h) != 0) failures++;
        }
        free(buf);
        free(map);
    }
    stpm_detector_destroy(det);
    return failures != 0;
}

typedef struct job {
    stpm_detector *det;
    const image *images;
    int count, repeat;
    float scores[MAX_IMAGES];
    float *maps[MAX_IMAGES];
    int status;
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    int rep, i;
    for (rep = 0; rep < j->repeat; rep++)
        for (i = 0; i < j->count; i++) {
            const image *img = &j->images[i];
            stpm_result r;
            if (j->maps[i] == NULL) j->maps[i] = malloc(sizeof(float) * img->width * img->height);
            if (stpm_detector_infer(j->det, img->rgb, img->width, img->height, img->width * 3, STPM_PIXEL_RGB8,
                                    &r, j->maps[i]) != STPM_OK) {
                j->status = 1;
                return NULL;
            }
            j->scores[i] = r.score;
        }
    return NULL;
}

static double max_diff(const job *a, const job *b)
{
    double worst = 0;
    int i;
    size_t p;
    for (i = 0; i < a->count; i++) {
        size_t n = (size_t)a->images[i].width * a->images[i].height;
        worst = fmax(worst, fabs(a->scores[i] - b->scores[i]));
        for (p = 0; p < n; p++) worst = fmax(worst, fabs(a->maps[i][p] - b->maps[i][p]));
    }
    return worst;
}

static int run_threads(const char *model, const char *dirname, int repeat)
{
    image images[MAX_IMAGES];
    job solo, two[2], shared[2];
    pthread_t th[2];
    stpm_detector *d0 = NULL, *d1 = NULL, *d2 = NULL;
    int count = 0, t;
    struct dirent *e;
    DIR *dir = opendir(dirname);
    if (dir == NULL) return 1;
    while ((e = readdir(dir)) != NULL && count < MAX_IMAGES) {
        char path[4096];
        if (strstr(e->d_name, ".ppm") == NULL) continue;
        snprintf(path, sizeof path, "%s/%s", dirname, e->d_name);
        if (read_ppm(path, &images[count]) == 0) count++;
    }
    closedir(dir);
    if (stpm_detector_create(model, NULL, &d0) || stpm_detector_create(model, NULL, &d1) ||
        stpm_detector_create(model, NULL, &d2)) {
        printf("FAIL %s\n", stpm_last_error());
        return 1;
    }
    memset(&solo, 0, sizeof solo);
    solo.det = d0; solo.images = images; solo.count = count; solo.repeat = 1;
    run_job(&solo);
    for (t = 0; t < 2; t++) {
        memset(&two[t], 0, sizeof two[t]);
        two[t].det = t ? d2 : d1; two[t].images = images; two[t].count = count; two[t].repeat = repeat;
        pthread_create(&th[t], NULL, run_job, &two[t]);
    }
    for (t = 0; t < 2; t++) pthread_join(th[t], NULL);
    for (t = 0; t < 2; t++) {
        memset(&shared[t], 0, sizeof shared[t]);
        shared[t].det = d0; shared[t].images = images; shared[t].count = count; shared[t].repeat = repeat;
        pthread_create(&th[t], NULL, run_job, &shared[t]);
    }
    for (t = 0; t < 2; t++) pthread_join(th[t], NULL);
    printf("threads\t%d images\tstatus %d %d %d %d %d\n", count, solo.status, two[0].status, two[1].status,
           shared[0].status, shared[1].status);
    printf("two_handles_max_diff\t%.9g\t%.9g\n", max_diff(&solo, &two[0]), max_diff(&solo, &two[1]));
    printf("shared_handle_max_diff\t%.9g\t%.9g\n", max_diff(&solo, &shared[0]), max_diff(&solo, &shared[1]));
    stpm_detector_destroy(d0);
    stpm_detector_destroy(d1);
    stpm_detector_destroy(d2);
    return solo.status || two[0].status || two[1].status || shared[0].status || shared[1].status || count == 0;
}

static int run_create(const char *model)
{
    stpm_detector *det = NULL;
    stpm_status status = stpm_detector_create(model, NULL, &det);
    printf("create\t%d\t%s\n", (int)status, status == STPM_OK ? "" : stpm_last_error());
    if (status != STPM_OK && det != NULL) return 1;
    return stpm_detector_destroy(det) != STPM_OK;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "create") == 0) return run_create(argv[2]);
    if (argc == 4 && strcmp(argv[1], "errors") == 0) return run_errors(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "formats") == 0) return run_formats(argv[2], argv[3], argv[4]);
    if (argc == 5 && strcmp(argv[1], "threads") == 0) return run_threads(argv[2], argv[3], atoi(argv[4]));
    fprintf(stderr, "usage: capi_check create MODEL | errors MODEL CORRUPT.onnx | formats MODEL IMAGE.ppm OUT | threads MODEL DIR REPEAT\n");
    return 2;
}
