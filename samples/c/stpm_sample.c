/*
 * stpm_sample: run every image of a folder through an stpm-edge model from C.
 *
 *     stpm_sample MODEL IMAGE_DIR [MAP.pgm]
 *
 * Prints one line per image (score, OK/NG, regions) and writes the anomaly map of the first
 * image as an 8-bit PGM (0 = normal, 255 = twice the threshold or more). Images are binary
 * PPM (P6, colour) or PGM (P5, grey) files, so that the sample needs nothing but libc; a real
 * inspection program hands over the frames its camera SDK delivers instead. Convert PNG/JPEG
 * with e.g. `python3 -c "import cv2,sys; cv2.imwrite(sys.argv[2], cv2.imread(sys.argv[1]))" a.png a.ppm`.
 *
 * Exit status: 0 when every image ran, 1 on any error (the message names the file).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stpm_edge.h>

typedef struct image {
    int width, height, channels; /* channels: 3 (PPM, RGB order) or 1 (PGM) */
    unsigned char *pixels;
} image;

static int read_token(FILE *f, int *value)
{
    int c = fgetc(f);
    while (c == '#' || c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        if (c == '#')
            while (c != '\n' && c != EOF) c = fgetc(f);
        c = fgetc(f);
    }
    if (c < '0' || c > '9') return -1;
    *value = 0;
    while (c >= '0' && c <= '9') {
        if (*value > 100000) return -1;
        *value = *value * 10 + (c - '0');
        c = fgetc(f);
    }
    return 0; /* the one whitespace byte after the token is consumed */
}

/* Reads a binary 8-bit PPM/PGM; returns 0 on success, else prints why and returns -1. */
static int read_pnm(const char *path, image *img)
{
    char magic[3] = {0};
    int maxval = 0;
    size_t n;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "stpm_sample: %s: cannot open\n", path);
        return -1;
    }
    if (fread(magic, 1, 2, f) != 2 || magic[0] != 'P' || (magic[1] != '6' && magic[1] != '5') ||
        read_token(f, &img->width) || read_token(f, &img->height) || read_token(f, &maxval) ||
        img->width < 1 || img->height < 1 || maxval != 255) {
        fprintf(stderr, "stpm_sample: %s: not a binary 8-bit PPM (P6) or PGM (P5) image\n", path);
        fclose(f);
        return -1;
    }
    img->channels = magic[1] == '6' ? 3 : 1;
    n = (size_t)img->width * img->height * img->channels;
    img->pixels = malloc(n);
    if (img->pixels == NULL || fread(img->pixels, 1, n, f) != n) {
        fprintf(stderr, "stpm_sample: %s: truncated image\n", path);
        free(img->pixels);
        img->pixels = NULL;
        fclose(f);
        return -1;
    }
    fclose(f);
    return 0;
}

static int write_map_pgm(const char *path, const float *map, int width, int height, float threshold)
{
    FILE *f = fopen(path, "wb");
    int i;
    if (f == NULL) return -1;
    fprintf(f, "P5\n%d %d\n255\n", width, height);
    for (i = 0; i < width * height; i++) {
        float v = map[i] / (2.0f * threshold) * 255.0f;
        fputc(v <= 0.0f ? 0 : v >= 255.0f ? 255 : (int)(v + 0.5f), f);
    }
    return fclose(f);
}

static int is_pnm(const char *name)
{
    size_t n = strlen(name);
    return n > 4 && (strcmp(name + n - 4, ".ppm") == 0 || strcmp(name + n - 4, ".pgm") == 0);
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    stpm_detector *det = NULL;
    stpm_detector_info info;
    char **names = NULL;
    size_t count = 0, cap = 0, i;
    struct dirent *entry;
    DIR *dir;
    int failed = 0, wrote_map = 0;

    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s MODEL IMAGE_DIR [MAP.pgm]\n", argv[0]);
        return 2;
    }
    if (!STPM_CHECK_ABI()) {
        fprintf(stderr, "stpm_sample: libstpm_edge speaks ABI %d, this program was built for %d\n",
                (int)stpm_abi_version(), STPM_ABI_VERSION);
        return 1;
    }
    if (stpm_detector_create(argv[1], NULL, &det) != STPM_OK) {
        fprintf(stderr, "stpm_sample: %s\n", stpm_last_error());
        return 1;
    }
    stpm_detector_get_info(det, &info);
    printf("# libstpm_edge %s, %s %s, model input %dx%d, threshold %.3f\n", stpm_version(), info.backend,
           info.precision, (int)info.input_width, (int)info.input_height, info.threshold);

    dir = opendir(argv[2]);
    if (dir == NULL) {
        fprintf(stderr, "stpm_sample: %s: cannot open folder\n", argv[2]);
        stpm_detector_destroy(det);
        return 1;
    }
    while ((entry = readdir(dir)) != NULL) {
        if (!is_pnm(entry->d_name)) continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 64;
            names = realloc(names, cap * sizeof *names);
            if (names == NULL) return 1;
        }
        names[count++] = strdup(entry->d_name);
    }
    closedir(dir);
    qsort(names, count, sizeof *names, compare_names);
    if (count == 0) fprintf(stderr, "stpm_sample: %s: no .ppm or .pgm images\n", argv[2]);

    for (i = 0; i < count; i++) {
        char path[4096];
        image img = {0, 0, 0, NULL};
        stpm_result r;
        float *map = NULL;
        snprintf(path, sizeof path, "%s/%s", argv[2], names[i]);
        if (read_pnm(path, &img) != 0) {
            failed = 1;
        } else {
            if (argc == 4 && !wrote_map) map = malloc(sizeof(float) * img.width * img.height);
            if (stpm_detector_infer(det, img.pixels, img.width, img.height, img.width * img.channels,
                                    img.channels == 3 ? STPM_PIXEL_RGB8 : STPM_PIXEL_GRAY8, &r, map) != STPM_OK) {
                fprintf(stderr, "stpm_sample: %s: %s\n", path, stpm_last_error());
                failed = 1;
            } else {
                printf("%s\t%.6f\t%s\t%d\n", names[i], r.score, r.is_anomalous ? "NG" : "OK", (int)r.num_boxes);
                if (map != NULL) {
                    if (write_map_pgm(argv[3], map, img.width, img.height, r.threshold) != 0) {
                        fprintf(stderr, "stpm_sample: %s: cannot write\n", argv[3]);
                        failed = 1;
                    }
                    wrote_map = 1;
                }
            }
        }
        free(map);
        free(img.pixels);
        free(names[i]);
    }
    free(names);
    stpm_detector_destroy(det);
    return failed || count == 0;
}
