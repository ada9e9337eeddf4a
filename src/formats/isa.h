/* For the files compiled once per instruction set (kernels.c, pk_isa.c): BQ_ISA
 * is the suffix (scalar, avx2, avx512) their exported names carry. */
#ifndef BQ_ISA_H
#define BQ_ISA_H
#ifndef BQ_ISA
#define BQ_ISA scalar
#endif
#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define INLINE static inline __attribute__((always_inline))
#endif
