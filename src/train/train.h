/* Quantisation-aware fine-tuning (issue #20): the LLaMA family's forward pass
 * with its activations kept, the backward pass, and the trainer around them.
 *
 * Every fake quantiser of the inference engine sits in the training forward at
 * the same place (weights, linear inputs, stored K/V, the LM head) and passes its
 * gradient straight through (STE: dL/dx = dL/dq(x)). Master weights stay float32
 * in the model; the forward uses q(W) (or q(W + s B A) with LoRA, so merging the
 * adapters on save gives exactly the weights the training saw). */
#ifndef BQ_TRAIN_H
#define BQ_TRAIN_H
#include "model.h"
#include "tops.h"

/* One linear in training: the model's layer (master weights in l->w) and what the
 * forward multiplies by. Pointers other than l are the backend's memory (on the CPU,
 * w and b are the model's own arrays). */
typedef struct {
    linear *l;
    bq_format *wf, *af;   /* weight and input quantisers (NULL: float) */
    float *w, *b;         /* the master weight and the bias (NULL: none) */
    float *wq;            /* q(W [+ s B A]), or w itself without a quantiser or adapter */
    float *gw, *gb;       /* gradients of the weight the forward used, and of the bias (NULL: frozen) */
    int lora;             /* rank (0: none) */
    float *A, *B, *gA, *gB;  /* adapters: W_eff = W + s B A, A [r, in], B [out, r] */
} tlin;

/* A norm in training: its weight and bias (NULL: none) and their gradients (NULL: frozen),
 * the backend's memory. */
typedef struct { float *w, *b, *gw, *gb; } tnorm;

/* A tensor the optimiser updates. */
typedef struct {
    char name[160];
    float *w, *g, *m, *v;  /* the backend's */
    float *host;           /* the model's array w mirrors (NULL: none, or w itself) */
    size_t n;
    int rows, cols;  /* rows 1 for vectors */
    int decay;       /* weight decay applies (matrices) */
} tparam;

struct bq_trainer {
    bq_model *m;
    bq_train_opts o;
    bq_qopts qo;
    tlin *lin;        /* layers * 7, then the LM head */
    int nlin;
    bq_format *kvf;   /* stored K/V */
    bq_format *attf;  /* attention operands (q, k, P, v) */
    bq_format *embf;  /* the embedding table as the lookup reads it (NULL: float) */
    float *embq;      /* q(E) with embf (backend) */
    tparam *p;
    int np;
    tr_be *be;        /* where it runs (tops.h) */
    const tr_ops *op;
    float *emb, *pos;                 /* the token and position embeddings (backend; pos NULL: rotary) */
    float *g_emb, *g_pos;             /* their gradients (NULL: frozen) */
    tnorm *norm;                      /* the layers' two norms (2 l, 2 l + 1), then the final one */
    tnorm *qkn;                       /* the layers' per-head q and k norms (Qwen3; NULL: none) */
    int T;            /* tokens of activations held */
    float *acts, *scratch, *lr_tmp;   /* lr_tmp: the adapters' two [T, rank] products */
    int threads;
    long step;        /* optimiser steps taken */
};

/* One window: forward, loss (mean negative log-likelihood of ids[1..n) given the
 * prefix) into *loss, and the gradients of loss * gscale added to the trainer's. */
bq_status train_window(bq_trainer *t, const int32_t *ids, int n, double gscale, double *loss);
/* q(W) (and the adapters merged) for every linear: once per optimiser step. */
bq_status train_prepare(bq_trainer *t);
void train_zero_grads(bq_trainer *t);
float train_lora_scale(const bq_trainer *t);
/* A parameter's weights (which 0), gradient (1) or moments (2, 3) copied to the host. */
bq_status train_param_get(const bq_trainer *t, int i, int which, float *host);

#endif
