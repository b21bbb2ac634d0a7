/* tile_undef.h: undefines the macros of one instantiation of the kernels
 * of ops_tiles.c (kernels/tile.inc lists them). */
#undef TILE
#undef TILE_ANY
#undef ISA
#undef SFX
#undef T
#undef VEC
#undef LANES
#undef NR
#undef MASK_T
#undef MASK_FIRST
#undef VZERO
#undef VSET1
#undef VMUL
#undef VFMA
#undef VLOAD
#undef VSTORE
#undef NONZERO_BITS
