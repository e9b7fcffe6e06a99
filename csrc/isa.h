/* Instantiates kernels.h for one ISA: float and double, each at LC_VB bytes per vector and at
 * half that (the input gradient of small batches). Included by cpu_<isa>.c with LC_ISA (a name),
 * LC_VB, the tile sizes and, on x86-64, LC_TARGET (the instruction sets, for GCC/Clang) defined;
 * optionally LC_NT_<F32|F64>[_HALF] (non-temporal stores) and LC_LOAD_PART_/LC_STORE_PART_<...>
 * (masked loads and stores of the first `len` lanes, which touch no memory past them). */

#ifdef LC_TARGET  /* x86-64: compiled for these instruction sets whatever the compiler's flags */
#define LC_ATTR __attribute__((target(LC_TARGET)))
#else
#define LC_ATTR
#endif
#define LC_CAT3(s, isa, t) s##_##isa##_##t
#define LC_NAME3(s, isa, t) LC_CAT3(s, isa, t)

#define T float
#define VB (LC_VB / 2)
#define NAME(s) LC_NAME3(s, LC_ISA, h32)
#define LC_HALF NULL
#ifdef LC_NT_F32_HALF
#define LC_NT_STORE LC_NT_F32_HALF
#endif
#ifdef LC_LOAD_PART_F32_HALF
#define LC_LOAD_PART LC_LOAD_PART_F32_HALF
#define LC_STORE_PART LC_STORE_PART_F32_HALF
#endif
#include "kernels.h"
#undef VB
#undef NAME
#undef LC_HALF
#undef LC_NT_STORE
#undef LC_LOAD_PART
#undef LC_STORE_PART
#define VB LC_VB
#define NAME(s) LC_NAME3(s, LC_ISA, f32)
#define LC_HALF (&LC_NAME3(kernels, LC_ISA, h32))
#ifdef LC_NT_F32
#define LC_NT_STORE LC_NT_F32
#endif
#ifdef LC_LOAD_PART_F32
#define LC_LOAD_PART LC_LOAD_PART_F32
#define LC_STORE_PART LC_STORE_PART_F32
#endif
#include "kernels.h"
#undef T
#undef VB
#undef NAME
#undef LC_HALF
#undef LC_NT_STORE
#undef LC_LOAD_PART
#undef LC_STORE_PART

#define T double
#define VB (LC_VB / 2)
#define NAME(s) LC_NAME3(s, LC_ISA, h64)
#define LC_HALF NULL
#ifdef LC_NT_F64_HALF
#define LC_NT_STORE LC_NT_F64_HALF
#endif
#ifdef LC_LOAD_PART_F64_HALF
#define LC_LOAD_PART LC_LOAD_PART_F64_HALF
#define LC_STORE_PART LC_STORE_PART_F64_HALF
#endif
#include "kernels.h"
#undef VB
#undef NAME
#undef LC_HALF
#undef LC_NT_STORE
#undef LC_LOAD_PART
#undef LC_STORE_PART
#define VB LC_VB
#define NAME(s) LC_NAME3(s, LC_ISA, f64)
#define LC_HALF (&LC_NAME3(kernels, LC_ISA, h64))
#ifdef LC_NT_F64
#define LC_NT_STORE LC_NT_F64
#endif
#ifdef LC_LOAD_PART_F64
#define LC_LOAD_PART LC_LOAD_PART_F64
#define LC_STORE_PART LC_STORE_PART_F64
#endif
#include "kernels.h"
#undef T
#undef VB
#undef NAME
#undef LC_HALF
#undef LC_NT_STORE
#undef LC_LOAD_PART
#undef LC_STORE_PART
