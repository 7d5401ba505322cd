/* The model store's flash on this board: the STM32F405's sectors 10 and 11 on silicon,
 * SRAM with NOR semantics under QEMU (details in flash_store.c). */
#ifndef NF_FLASH_STORE_H
#define NF_FLASH_STORE_H
#include "nf_store.h"
/* Detect silicon or emulator and return the store's flash ops. */
const nf_flash_ops *flash_store_init(void);
/* 1 under QEMU (slots in SRAM), 0 on silicon (slots in flash). */
int flash_store_emulated(void);
#endif
