/* The model's tensors as a flat list of named slots (slots.c). */
#ifndef BQ_SLOTS_H
#define BQ_SLOTS_H
#include "model.h"

typedef struct {
    char name[128];
    float **f;      /* float storage */
    pmat **p;       /* packed storage, or NULL where a tensor cannot be packed */
    linear *l;      /* the linear a weight belongs to (for its activation format) */
    int rows, cols; /* cols = 0: a vector of `rows` */
} slot;
typedef struct { slot *v; int n, cap, oom; } slot_list;

/* Names and shapes of every linear from the config (as the loaders set them). */
void model_skeleton(bq_model *m);
bq_status model_slots(bq_model *m, slot_list *s);
slot *slot_find(slot_list *s, const char *name);
int model_head_tied(const bq_model *m);
/* The tensors the forward pass needs for this config are all there. */
bq_status model_check_complete(const bq_model *m, const char *path);

/* .bq files (bqfile.c) and GGUF (gguf.c): parsers of a whole file in memory,
 * and the loader that maps a file for one of them (slots.c). */
typedef bq_status (*model_parser)(const char *path, const uint8_t *buf, size_t size, bq_model **out);
bq_status bqfile_parse(const char *path, const uint8_t *buf, size_t size, bq_model **out);
bq_status model_file_load(const char *path, model_parser parse, bq_model **out);
uint32_t bq_crc32(const void *data, size_t n);
/* Attention/KV formats, rounding and seed as JSON members (.bq header, GGUF blockq.runtime). */
void runtime_to_json(const bq_model *m, cJSON *o);
bq_status runtime_from_json(const cJSON *o, bq_model *m, const char *path);
bq_status gguf_parse(const char *path, const uint8_t *buf, size_t size, bq_model **out);
/* One row of a GGUF tensor of type `type` (F32 0, F16 1, Q4_0 2, Q4_1 3, Q5_0 6, Q5_1 7, Q8_0 8, BF16 30, MXFP4 39). */
void gguf_row_to_float(uint32_t type, const uint8_t *row, size_t cols, float *out);

#endif
