/* gpu.h: the entry points of the CUDA side, callable from C. A build
 * without CUDA links gpu/no_cuda.c, which answers "no CUDA device". */
#ifndef CPK_GPU_H
#define CPK_GPU_H

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when none (or no CUDA in this build).
 * On 0, writes a reason into `why` (at most `len` bytes). */
int cpk__cuda_device_count(char *why, unsigned long len);
/* 1 when the library was built with the CUDA path. */
int cpk__cuda_built(void);

#ifdef __cplusplus
}
#endif
#endif
