/* Host NOR-flash emulator backed by a file, for host builds of the protocol core (tests, the
 * power-cut bench, the fuzzer, the Crazyflie stand-in).
 *
 * NOR semantics as on the STM32F4: an erase works on whole sectors and sets every byte to
 * 0xFF; programming only clears bits (each byte becomes old & data); nothing sets a bit
 * except an erase. The file is mapped shared, so every completed operation is in the file
 * (the page cache) even if the process is killed right after it.
 *
 * Power cut: nf_nor_set_cut(nor, n, tear) lets n more erase/program operations complete; the
 * next one is torn (a program clears the bits of only its first `tear` bytes, an erase sets
 * only its first `tear` bytes to 0xFF; tear 0: nothing) and from then on the flash is
 * unpowered: every operation fails with NF_NOR_ERR_POWER and changes nothing. */
#ifndef NF_NOR_FLASH_H
#define NF_NOR_FLASH_H
#include <stddef.h>
#include <stdint.h>

#include "nf_store.h"

#define NF_NOR_MAX_SECTORS 16
#define NF_NOR_TRACE 4096       /* operations whose kind and length are recorded */
#define NF_NOR_ERR_RANGE (-1)   /* address/sector outside the flash */
#define NF_NOR_ERR_POWER (-2)   /* the emulated power is cut */

typedef struct nf_nor {
    int fd;
    uint8_t *mem;               /* the mapped file */
    uint32_t size;
    uint32_t n_sectors;
    uint32_t sector_start[NF_NOR_MAX_SECTORS + 1];
    int64_t ops_left;           /* operations before the cut; < 0: no cut */
    uint32_t tear_bytes;
    int powered;
    uint64_t ops;               /* erase + program operations completed (or torn) */
    uint64_t erases, programs, bytes_programmed;
    uint32_t slot_first_sector[2], slot_sectors;
    /* The first NF_NOR_TRACE operations since nf_nor_set_cut: 'E' erase / 'P' program, and
     * its length in bytes (what a cut can tear). */
    uint32_t trace_n;
    uint8_t trace_kind[NF_NOR_TRACE];
    uint32_t trace_len[NF_NOR_TRACE];
} nf_nor;

/* Open (create when missing: all 0xFF) a flash image of n_sectors sectors of the given sizes.
 * An existing file must have exactly the total size. Returns 0, or -1 with a message in err. */
int nf_nor_open(nf_nor *nor, const char *path, uint32_t n_sectors, const uint32_t *sector_bytes,
                char *err, size_t err_len);
void nf_nor_close(nf_nor *nor);
int nf_nor_erase_sector(nf_nor *nor, uint32_t sector);
int nf_nor_program(nf_nor *nor, uint32_t address, const uint8_t *data, uint32_t len);
/* Also restores the power and restarts the operation trace. */
void nf_nor_set_cut(nf_nor *nor, int64_t ops, uint32_t tear_bytes);

/* Flash ops for the store: slot s is sectors [first_sector[s], first_sector[s] + sectors);
 * slot_bytes is the smaller of the two ranges. ops->ctx = nor. */
void nf_nor_flash_ops(nf_nor *nor, nf_flash_ops *ops, const uint32_t first_sector[2],
                      uint32_t sectors);
#endif
