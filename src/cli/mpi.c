/* The CLI across MPI ranks (`mpirun -np N blockq ppl|sweep ...`): when built
 * with MPI (mpicc found at build time; MPI=0 turns it off) and started by
 * mpirun, each rank takes its share of the windows or formats, and the results
 * are added with every entry contributed by exactly one rank (the others give
 * 0), so the sums are exact and the output is the same bits for any rank count.
 * Only rank 0 writes. The library itself knows nothing of MPI. */
#include "cli.h"
#include <stdlib.h>

#ifdef BQ_MPI
#include <mpi.h>

static int g_on, g_rank, g_size = 1;  /* the process's place in its mpirun (CLI state, not the library's) */

void cli_mpi_init(int *argc, char ***argv)
{
    /* only under a launcher: a plain `blockq` never touches MPI */
    if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMIX_RANK") && !getenv("PMI_SIZE")) return;
    if (MPI_Init(argc, argv) != MPI_SUCCESS) return;
    g_on = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
}
void cli_mpi_finalize(void) { if (g_on) MPI_Finalize(); }
int cli_mpi_rank(void) { return g_rank; }
int cli_mpi_size(void) { return g_size; }
const char *cli_mpi_built(void) { return "MPI"; }
void cli_mpi_sum(double *x, size_t n)
{
    if (g_size > 1) MPI_Allreduce(MPI_IN_PLACE, x, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}
void cli_mpi_sum_bytes(unsigned char *x, size_t n)
{
    if (g_size > 1) MPI_Allreduce(MPI_IN_PLACE, x, (int)n, MPI_UNSIGNED_CHAR, MPI_SUM, MPI_COMM_WORLD);
}
int cli_mpi_max(int v)
{
    if (g_size > 1) MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return v;
}
double cli_mpi_maxd(double v)
{
    if (g_size > 1) MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return v;
}
#else
void cli_mpi_init(int *argc, char ***argv) { (void)argc; (void)argv; }
void cli_mpi_finalize(void) {}
int cli_mpi_rank(void) { return 0; }
int cli_mpi_size(void) { return 1; }
const char *cli_mpi_built(void) { return NULL; }
void cli_mpi_sum(double *x, size_t n) { (void)x; (void)n; }
void cli_mpi_sum_bytes(unsigned char *x, size_t n) { (void)x; (void)n; }
int cli_mpi_max(int v) { return v; }
double cli_mpi_maxd(double v) { return v; }
#endif
