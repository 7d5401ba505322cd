/* The nanofly model store's two slots in the Crazyflie's STM32F405 flash, and the erase/program
 * operations on them.
 *
 * The slots are the chip's last two sectors, 10 and 11 (128 KiB each, 0x080C0000 and
 * 0x080E0000): the stock image starts at 0x08004000 (the bootloader keeps sector 0) and ends far
 * below (`nanofly crazyflie build` checks the ELF and fails if it grows into them), and cfloader
 * only erases the sectors an image covers, so reflashing the firmware keeps the stored model. */
#ifndef NANOFLY_CF_FLASH_H
#define NANOFLY_CF_FLASH_H
#include <stdbool.h>
#include <stdint.h>

#include "nf_store.h"

#define NF_CF_STORE_SLOTS 2u
#define NF_CF_STORE_FIRST_SECTOR 10u
#define NF_CF_STORE_SLOT_BYTES (128u * 1024u)
#define NF_CF_STORE_BASE 0x080C0000u
#define NF_CF_STORE_END (NF_CF_STORE_BASE + NF_CF_STORE_SLOTS * NF_CF_STORE_SLOT_BYTES)

#define NF_CF_FLASH_OK 0
#define NF_CF_FLASH_BUSY (-1)   /* armed or motors running: nothing was written */
#define NF_CF_FLASH_ERROR (-2)  /* the flash controller reported an error (WRP, alignment, ...) */
#define NF_CF_FLASH_RANGE (-3)  /* outside the store's sectors */

/* True while the store may stall the CPU: disarmed and all four motor ratios zero. */
bool nf_cf_flash_may_write(void);
/* Erase one slot's sector (sets every byte to 0xFF). Stalls the whole CPU, interrupts off, for
 * the sector erase time (128 KiB: 1 s typical, 2 s at most at 32-bit parallelism), kicking the
 * independent watchdog from RAM meanwhile. */
int nf_cf_flash_erase_slot(uint32_t slot);
/* Program bytes at any offset of a slot: each byte becomes old & data (NOR). */
int nf_cf_flash_program(uint32_t slot, uint32_t offset, const uint8_t *data, uint32_t length);
/* The slot's bytes, memory-mapped. */
const uint8_t *nf_cf_flash_slot(uint32_t slot);
/* The store's flash operations (nf_store.h) on the two slots. */
extern const nf_flash_ops nf_cf_flash_ops;
#endif
