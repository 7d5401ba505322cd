/* Persistent two-slot model store on NOR flash (part of the shared protocol core).
 *
 * Each slot is a fixed range of flash (one or more whole sectors the firmware image does not
 * use) holding a 32-byte header followed by the model blob:
 *
 *   offset  field
 *    0      u32 magic NF_SLOT_MAGIC
 *    4      u32 sequence number (a new commit gets the highest sequence in the store + 1)
 *    8      u32 blob size in bytes
 *   12      u32 model CRC (CRC-32 of the blob without its last 4 bytes, as in the protocol)
 *   16      u8 format (NANOFLY_FORMAT_*), 3 x u8 0
 *   20      u32 model id
 *   24      u32 header CRC: CRC-32 of bytes [0, 24)
 *   28      u32 activation mark: NF_SLOT_ACTIVATED once ACTIVATE chose this slot, else 0xFFFFFFFF
 *   32      the blob (size bytes)
 *
 * Order of writes (NOR: an erase sets every byte to 0xFF, programming only clears bits):
 *   BEGIN erases the slot that is not running; CHUNKs program the blob bytes; COMMIT checks
 *   the blob in flash and then programs bytes [0, 28) of the header; ACTIVATE programs the
 *   activation mark. A header is valid only when its magic and header CRC are right, so an
 *   erased, half-erased or half-programmed header never counts, and a torn activation mark is
 *   not the mark. At boot the store picks, among slots with a valid header, a blob whose CRC
 *   and nanofly_model_init check pass, and the activation mark, the highest sequence number.
 *   The running slot is never erased or programmed, so a power cut at any instant leaves the
 *   old model or (once its mark is whole) the new one. */
#ifndef NF_STORE_H
#define NF_STORE_H
#include <stddef.h>
#include <stdint.h>

#include "nanofly_policy.h"

#define NF_STORE_SLOTS 2
#define NF_SLOT_HEADER_BYTES 32u
#define NF_SLOT_MAGIC 0x4C53464Eu      /* "NFSL" little-endian */
#define NF_SLOT_ACTIVATED 0x56544341u  /* "ACTV": never all ones, so a torn write is not it */
#define NF_SLOT_HEADER_CRC_BYTES 24u   /* the header CRC covers [0, 24) */
#define NF_SLOT_MARK_OFFSET 28u

/* Flash access the store needs, implemented per target (STM32F4 flash controller, an
 * emulated NOR region under QEMU, a file-backed NOR emulator on the host, the Crazyflie's
 * flash). All functions return 0 on success, a negative value on failure (the core then
 * answers NF_ERR_FLASH with that value as detail1). */
typedef struct nf_flash_ops {
    void *ctx;
    /* Bytes per slot (header + the largest blob); both slots have this size. */
    uint32_t slot_bytes;
    /* Erase every sector of slot 0 or 1: afterwards all slot_bytes read 0xFF. May take
     * seconds on a real chip (see the target's notes); called only when may_write_flash
     * (nf_core.h) allowed it. */
    int (*erase_slot)(void *ctx, unsigned slot);
    /* Program len bytes at offset within the slot, any alignment: NOR semantics, every byte
     * becomes old & data. The store only programs bytes it has not programmed since the last
     * erase. */
    int (*program)(void *ctx, unsigned slot, uint32_t offset, const uint8_t *data, uint32_t len);
    /* Memory-mapped read address of the slot's first byte (4-byte aligned; the blob at +32
     * must be 4-byte aligned for nanofly_model_init). The model runs straight from here. */
    const uint8_t *(*read_base)(void *ctx, unsigned slot);
} nf_flash_ops;

/* A decoded slot header. */
typedef struct {
    uint32_t sequence, size, model_crc, model_id;
    uint8_t format;
    uint8_t activated;          /* the activation mark is whole */
} nf_slot_header;

/* What a slot holds, as nf_store_scan_slot found it. */
enum {
    NF_SLOT_EMPTY = 0,          /* no valid header (erased, torn, never committed) */
    NF_SLOT_BAD_BLOB = 1,       /* valid header, but the blob fails its CRC or model check */
    NF_SLOT_COMMITTED = 2,      /* valid header and blob, not activated */
    NF_SLOT_ACTIVE = 3,         /* valid header and blob, activation mark whole */
};

/* Encode a header (activation mark left at 0xFFFFFFFF) into out[NF_SLOT_HEADER_BYTES]. */
void nf_slot_header_encode(const nf_slot_header *h, uint8_t out[NF_SLOT_HEADER_BYTES]);
/* Decode and check magic + header CRC; returns 1 when valid. */
int nf_slot_header_decode(const uint8_t *raw, nf_slot_header *h);

/* Classify a slot: header, blob CRC, nanofly_model_init, format, size <= capacity, and
 * (when in_dim/out_dim are non-zero) the model's dimensions. Fills *h and, for COMMITTED /
 * ACTIVE, *model (pointing into flash). Returns NF_SLOT_*. */
int nf_store_scan_slot(const nf_flash_ops *flash, unsigned slot, uint32_t in_dim, uint32_t out_dim,
                       nf_slot_header *h, nanofly_model *model);
#endif
