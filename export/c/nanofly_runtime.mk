# The nanofly policy runtime's C sources, relative to this folder (the one list: the bridge
# firmware's Makefile includes it and nanofly.export.runtime reads it). Compile them all with
# this folder on the include path: nanofly_policy.h is the whole public interface.
NANOFLY_RUNTIME_SOURCES := \
	nanofly_policy.c \
	nanofly_validate.c \
	nanofly_crc32.c \
	kernels/nf_dense_f32.c \
	kernels/nf_dense_s8.c \
	kernels/nf_quantize_q15.c \
	kernels/nf_requant_tanh_q15.c \
	kernels/nf_tanh_f32.c
