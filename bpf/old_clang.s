# SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
# old_clang: an object shaped like clang 7-9 output, written in assembly because clang 14 no
# longer emits these shapes (the integrated assembler keeps them as written):
#   - no symbol is typed: functions and maps have STT_NOTYPE symbols (no .type directives),
#     and LLVM's basic-block labels (LBB*) are local symbols inside the code;
#   - the static subprogram `twice` in .text is reached by a call relative to the caller
#     with no relocation (from `scale`) and by calls relocated against the .text section
#     symbol with its offset in the instruction (from the programs);
#   - .rodata is referenced through its section symbol, the offset in the instruction;
#   - maps are legacy struct bpf_map_def in the "maps" section; a "version" section.
#
#   socket  old_socket  counts its runs in counts[0]; returns scale(twice(factor)) =
#                       (2 * 20 + 1) * 2 = 82
#   xdp     old_xdp     returns scale(0) = 2 (XDP_PASS)

	.text
	.globl	scale
scale:					# r0 = (r1 + 1) * 2
	r1 += 1
	call	twice
	exit
twice:					# r0 = r1 * 2
	r0 = r1
	r0 <<= 1
	exit

	.section	socket,"ax",@progbits
	.globl	old_socket
old_socket:
	r1 = 0
	*(u32 *)(r10 - 4) = r1
	r2 = r10
	r2 += -4
	r1 = counts ll
	call	1			# bpf_map_lookup_elem
	if r0 == 0 goto LBB0_2
	r1 = 1
	lock *(u64 *)(r0 + 0) += r1
LBB0_2:
	r1 = factor ll
	r1 = *(u32 *)(r1 + 0)
	call	twice
	r1 = r0
	call	scale
	exit

	.section	xdp,"ax",@progbits
	.globl	old_xdp
old_xdp:
	r1 = 0
	call	scale
	exit

	.section	.rodata,"a",@progbits
	.p2align	2
	.long	7
factor:
	.long	20

	.section	maps,"aw",@progbits
	.p2align	2
	.globl	counts
counts:
	.long	2			# BPF_MAP_TYPE_ARRAY
	.long	4			# key size
	.long	8			# value size
	.long	1			# max entries
	.long	0			# flags
	.globl	lengths
lengths:
	.long	1			# BPF_MAP_TYPE_HASH
	.long	4
	.long	8
	.long	16
	.long	0

	.section	license,"aw",@progbits
	.globl	_license
_license:
	.asciz	"GPL"

	.section	version,"aw",@progbits
	.p2align	2
	.globl	_version
_version:
	.long	0x050400		# KERNEL_VERSION(5, 4, 0)
