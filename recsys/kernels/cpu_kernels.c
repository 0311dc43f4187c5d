/* The fused CPU kernels, one op per file under cpu/, built as one translation unit (so the shared
 * products and vector helpers of cpu/common.h are inlined into each) by recsys/kernels/cpu_build.py with
 * the system C compiler (cc -O3 -march=native), loaded through ctypes; each entry point is checked
 * against its PyTorch reference when the library loads. */

#include "cpu/common.h"
#include "cpu/threads.h"

#include "cpu/encoder.c"     /* recsys_encode_last: SASRec / BERT4Rec inference */
#include "cpu/ranking.c"     /* recsys_rank_counts: exact full-ranking counts */
#include "cpu/softmax_ce.c"  /* recsys_softmax_ce, recsys_ce_keeps_exponentials: the full CE */
#include "cpu/dropout.c"     /* recsys_keep_mask: dropout masks */
#include "cpu/bf16_exp.c"    /* recsys_bf16_exp_colsum: the bf16 CE's elementwise pass */

/* The tile sizes the Python side needs (flop counts, padding): read from here, never copied by hand. */
int recsys_tile_constants(int64_t *out) {
    out[0] = QUERY_TILE;
    out[1] = RANK_CHUNK;
    out[2] = CE_POSITIONS;
    return 0;
}
