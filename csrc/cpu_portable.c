/* The portable kernels: 128-bit vectors of the compiler's vector extensions (SSE2 on x86-64,
 * NEON on aarch64, scalar code where the target has no vectors). */
#include "unshared_cpu.h"

#define LC_ISA portable
#define LC_VB 16
#define FWD_NB 6
#define FWD_NB_SMALL 4  /* for batches such as 8 */
#define FWD_OB 2
#define WG_OB 4
#define WG_RV 2
#define IG_CB1 8
#define IG_CB2 4
#define IG_CB4 2
#define ROWS_NB1 6  /* rows path, forward: samples x 1 output channel */
#define ROWS_OB 4   /* output channels of a block */
#define ROWS_NB4 2  /* samples x ROWS_OB output channels */
#define ROWS_RB1 6  /* weight grad: patch elements x 1 output channel */
#define ROWS_RB4 2  /* patch elements x ROWS_OB output channels */
#include "isa.h"
