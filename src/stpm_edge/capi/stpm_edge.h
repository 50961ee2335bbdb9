/*
 * stpm_edge.h - the C ABI of the stpm-edge runtime (libstpm_edge).
 *
 * C99. Build the library with `stpm capi build --out PREFIX`; compile with
 * `pkg-config --cflags --libs stpm_edge` (PKG_CONFIG_PATH=PREFIX/lib/pkgconfig).
 *
 *     stpm_detector *det = NULL;
 *     if (stpm_detector_create("model.onnx", NULL, &det) != STPM_OK) {
 *         fprintf(stderr, "%s\n", stpm_last_error());
 *         return 1;
 *     }
 *     stpm_result r;
 *     float *map = malloc(sizeof(float) * width * height);       // optional
 *     if (stpm_detector_infer(det, pixels, width, height, stride, STPM_PIXEL_BGR8, &r, map) == STPM_OK)
 *         printf("score %.4f %s\n", r.score, r.is_anomalous ? "NG" : "OK");
 *     stpm_detector_destroy(det);
 *
 * The library embeds the Python stpm-edge runtime (the same Detector and backends as the
 * Python API: TensorRT engines, ONNX Runtime, PyTorch checkpoints). The Python interpreter
 * starts inside the calling process on the first call that needs it (stpm_detector_create);
 * stpm_version(), stpm_abi_version(), stpm_status_string() and stpm_last_error() never start
 * it. Python exceptions never cross into C: every failure is a status plus a message.
 *
 * Ownership
 *   - Every pointer passed in (paths, options, pixels, result, map_out) is owned by the caller
 *     and only read or written for the duration of the call; none is kept.
 *   - A detector handle is created by stpm_detector_create and released by
 *     stpm_detector_destroy; nothing else frees it. Handles are never reused: a destroyed (or
 *     never created) handle passed to any function gives STPM_ERROR_INVALID_HANDLE, not a crash.
 *   - Strings returned by the library (stpm_version, stpm_status_string, stpm_last_error, the
 *     char arrays of stpm_detector_info) are owned by the library: do not free them.
 *
 * Threads
 *   - Every function may be called from any thread.
 *   - Calls on one handle are serialised by the library (safe, but not parallel). For parallel
 *     inference use one handle per thread; the backends release Python's global lock while
 *     they compute, so handles on different threads run concurrently.
 *   - stpm_last_error() is thread-local: it describes the last failed call of this thread and
 *     stays valid until this thread's next failing call.
 *
 * Units
 *   Scores and maps are in the model's normalised units: 0 is the smallest value seen on good
 *   images, the model's threshold (0.5 by default) separates good (below) from defective.
 */
#ifndef STPM_EDGE_H
#define STPM_EDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define STPM_API __declspec(dllexport)
#else
#define STPM_API __attribute__((visibility("default")))
#endif

/* The ABI version this header describes. Bumped when a struct layout or a signature changes
 * incompatibly; compare with stpm_abi_version() at run time (STPM_CHECK_ABI() does). */
#define STPM_ABI_VERSION 1
/* Most regions stpm_result carries: the runtime reports the 64 largest regions at most. */
#define STPM_MAX_BOXES 64
/* Length of the fixed strings in stpm_detector_info, NUL included. */
#define STPM_INFO_STRING 128

/* cffi:begin - plain C declarations, also parsed by the library build (no preprocessor). */
typedef enum stpm_status {
    STPM_OK = 0,
    STPM_ERROR_INVALID_ARGUMENT = 1, /* NULL pointer, bad size, stride, pixel format, option */
    STPM_ERROR_INVALID_HANDLE = 2,   /* NULL, destroyed or unknown detector */
    STPM_ERROR_MODEL = 3,            /* model missing, unreadable, corrupt or incompatible */
    STPM_ERROR_INFERENCE = 4,        /* the backend failed on this frame */
    STPM_ERROR_RUNTIME = 5,          /* the embedded Python runtime could not start or import */
    STPM_ERROR_INTERNAL = 6          /* a bug: please report it with stpm_last_error() */
} stpm_status;

typedef enum stpm_pixel_format {
    STPM_PIXEL_BGR8 = 0,  /* 3 bytes per pixel, B G R (OpenCV's default) */
    STPM_PIXEL_RGB8 = 1,  /* 3 bytes per pixel, R G B */
    STPM_PIXEL_GRAY8 = 2, /* 1 byte per pixel */
    STPM_PIXEL_BGRA8 = 3, /* 4 bytes per pixel, B G R A (alpha ignored) */
    STPM_PIXEL_RGBA8 = 4  /* 4 bytes per pixel, R G B A (alpha ignored) */
} stpm_pixel_format;

/* Options for stpm_detector_create. Fill with stpm_options_init() first, then set fields. */
typedef struct stpm_options {
    uint32_t struct_size; /* sizeof(stpm_options): set by stpm_options_init */
    const char *backend;  /* NULL or "auto" (TensorRT engine > ONNX Runtime CUDA > CPU),
                             "onnxruntime", "cpu", "cuda", "tensorrt", "torch" */
    double threshold;     /* NaN (the default): the model's threshold; else normalised units */
    int32_t threads;      /* CPU inference threads; 0 (the default): the backend's choice */
} stpm_options;

/* One connected region of the thresholded map, in frame pixels. */
typedef struct stpm_box {
    int32_t x, y, w, h;
    int32_t area;  /* pixels in the region */
    float score;   /* the map's peak inside the region */
} stpm_box;

/* What the detector says about one frame; caller-owned, filled by stpm_detector_infer. */
typedef struct stpm_result {
    float score;           /* image score (normalised units) */
    float threshold;       /* the threshold in force */
    int32_t is_anomalous;  /* 1 when score >= threshold, else 0 */
    int32_t num_boxes;     /* regions of map >= threshold, boxes[0..num_boxes) filled */
    float latency_ms;      /* time spent in the runtime for this call (pre- and
                              post-processing and inference), the C boundary excluded */
    stpm_box boxes[64];    /* STPM_MAX_BOXES; highest peak score first */
} stpm_result;

/* What a detector runs; filled by stpm_detector_get_info. */
typedef struct stpm_detector_info {
    int32_t input_width;   /* the model's frame size; other frame sizes are resized */
    int32_t input_height;
    float threshold;       /* the threshold in force (normalised units) */
    char backend[128];     /* e.g. "onnxruntime (CPUExecutionProvider)" (STPM_INFO_STRING) */
    char precision[128];   /* "fp32", "fp16", "int8" */
} stpm_detector_info;

typedef struct stpm_detector stpm_detector; /* opaque */
/* cffi:end */

/* The library's version string, e.g. "0.1.0". Never starts Python. */
STPM_API const char *stpm_version(void);
/* The library's STPM_ABI_VERSION. Never starts Python. */
STPM_API int32_t stpm_abi_version(void);
/* A constant description of a status ("invalid argument", ...). */
STPM_API const char *stpm_status_string(stpm_status status);
/* The message of this thread's last failed call ("" if none). Owned by the library. */
STPM_API const char *stpm_last_error(void);

/* Defaults: backend "auto", the model's threshold, the backend's thread count. */
STPM_API void stpm_options_init(stpm_options *options);

/* Open a model (.onnx, .engine or .pt). options may be NULL (defaults). On success *out is a
 * new handle; on failure *out is set to NULL and the status says why. */
STPM_API stpm_status stpm_detector_create(const char *model_path, const stpm_options *options,
                                          stpm_detector **out);

/* Run one frame. pixels: height rows of stride_bytes bytes each, of which the first
 * width * (bytes per pixel) are read. result: caller-owned, filled on success. map_out: NULL,
 * or a caller-owned buffer of width * height floats (row-major, no padding) that receives the
 * anomaly map resized to the frame. Frames of any size are accepted (1..16384 per side). */
STPM_API stpm_status stpm_detector_infer(stpm_detector *detector, const uint8_t *pixels, int32_t width,
                                         int32_t height, int32_t stride_bytes,
                                         stpm_pixel_format pixel_format, stpm_result *result,
                                         float *map_out);

/* What the detector runs (input size, threshold, backend, precision). */
STPM_API stpm_status stpm_detector_get_info(stpm_detector *detector, stpm_detector_info *info);

/* Release a detector. NULL is a no-op (STPM_OK); a destroyed or unknown handle gives
 * STPM_ERROR_INVALID_HANDLE. */
STPM_API stpm_status stpm_detector_destroy(stpm_detector *detector);

/* Non-zero when the loaded library speaks this header's ABI. */
#define STPM_CHECK_ABI() (stpm_abi_version() == STPM_ABI_VERSION)

#ifdef __cplusplus
}
#endif

#endif /* STPM_EDGE_H */
